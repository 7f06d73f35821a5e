//! Prints statistics of the installed Rust documentation corpus: documents, characters and bytes per book and per
//! split, skipped pages by reason, and passages at the default size.
//!
//! ```sh
//! cargo run -p effllm-data --release --example corpus_stats            # default docs directory
//! cargo run -p effllm-data --release --example corpus_stats -- DIR     # a docs directory or sysroot
//! ```

use std::collections::BTreeMap;
use std::time::Instant;

use effllm_data::{Corpus, CorpusOptions, PassageConfig, PassageTable, Split, SplitConfig, docs_dir};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let explicit = std::env::args_os().nth(1).map(std::path::PathBuf::from);
    let dir = docs_dir(explicit.as_deref())?;
    let t = Instant::now();
    let corpus = Corpus::load(&dir, &CorpusOptions::default())?;
    println!("docs directory: {}", dir.display());
    println!("loaded {} documents in {:.2?}; content hash {}", corpus.len(), t.elapsed(), corpus.content_hash());
    println!();
    let split = SplitConfig::default();
    println!("{}", corpus.stats(&split));

    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for s in corpus.skipped() {
        *reasons.entry(format!("{:?}", s.reason)).or_default() += 1;
    }
    println!("skipped by reason: {reasons:?}");
    println!();

    let cfg = PassageConfig::default();
    println!("passages (max {} characters):", cfg.max_chars);
    let all = PassageTable::build(corpus.documents(), &cfg)?;
    let lens: Vec<usize> = all.iter().map(|p| p.text().chars().count()).collect();
    let mean = lens.iter().sum::<usize>() as f64 / lens.len().max(1) as f64;
    println!("  all: {} passages, mean {:.0} characters", all.len(), mean);
    for s in Split::ALL {
        let t = PassageTable::build(corpus.split(s, &split), &cfg)?;
        println!("  {}: {} passages", s.name(), t.len());
    }
    println!();
    println!("{} split documents:", Split::Test.name());
    for d in corpus.split(Split::Test, &split) {
        println!("  {:<60} {:>7} chars  {}", d.id, d.chars(), d.title);
    }
    Ok(())
}
