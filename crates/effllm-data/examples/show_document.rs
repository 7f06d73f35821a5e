//! Prints the text of one document of the installed docs, to inspect the HTML-to-text conversion.
//!
//! ```sh
//! cargo run -p effllm-data --example show_document -- book/ch04-01-what-is-ownership.html [keep-hidden]
//! ```

use effllm_data::{Corpus, CorpusOptions, HiddenLines, docs_dir};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let id = args.next().ok_or("usage: show_document DOCUMENT-ID [keep-hidden]")?;
    let hidden_lines =
        if args.next().as_deref() == Some("keep-hidden") { HiddenLines::Keep } else { HiddenLines::Drop };
    let book = id.split('/').next().unwrap_or_default().parse()?;
    let opts = CorpusOptions { books: vec![book], hidden_lines, ..CorpusOptions::default() };
    let corpus = Corpus::load(docs_dir(None)?, &opts)?;
    match corpus.get(&id) {
        Some(d) => println!("# {}\n\n{}", d.title, d.text),
        None => {
            let reason = corpus.skipped().iter().find(|s| s.id == id).map(|s| format!("{:?}", s.reason));
            return Err(format!("no document `{id}` (skipped: {reason:?})").into());
        }
    }
    Ok(())
}
