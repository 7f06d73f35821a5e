//! Writes every document of the installed docs to stdout as `==> id | title <==` followed by its text, for
//! inspection with ordinary text tools (`grep`, `less`, `wc`).
//!
//! ```sh
//! cargo run -p effllm-data --release --example export_text > /tmp/rust-docs.txt
//! ```

use std::io::Write;

use effllm_data::Corpus;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let corpus = Corpus::load_default()?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for d in corpus.documents() {
        writeln!(out, "==> {} | {} <==\n{}\n", d.id, d.title, d.text)?;
    }
    out.flush()?;
    Ok(())
}
