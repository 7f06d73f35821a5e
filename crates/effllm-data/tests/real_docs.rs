//! The installed Rust documentation (`rustup component add rust-docs`): skipped with a notice when absent.
//!
//! One test loads the corpus once and checks everything, so the 2-core CI converts the ~60 MB of HTML only once.

use effllm_data::{
    Book, ByteEncoder, Corpus, CorpusOptions, Document, HiddenLines, PassageConfig, PassageTable, SkipReason, Split,
    SplitConfig, TokenizedSplit, docs_dir, split_passages,
};

fn load() -> Option<Corpus> {
    let dir = match docs_dir(None) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("skipped: {e}");
            return None;
        }
    };
    match Corpus::load(&dir, &CorpusOptions::default()) {
        Ok(c) => Some(c),
        Err(e @ effllm_data::DataError::BookMissing { .. }) => {
            eprintln!("skipped: {e}");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

/// Markup that must never survive conversion (code blocks in the docs do contain a few real HTML tags, such as
/// the web server chapter's `hello.html`, so bare `<p>` is not on the list).
const MARKUP: &[&str] = &[
    "<span",
    "</span>",
    "<a href",
    "</a>",
    "<div",
    "</div>",
    "class=\"",
    "<code class",
    "&amp;",
    "&lt;",
    "&gt;",
    "&quot;",
    "&#",
    "&nbsp;",
];

#[test]
fn installed_rust_docs() {
    let Some(corpus) = load() else { return };

    // Documents per book (rustc 1.95: book 111, nomicon 63, reference 116, rust-by-example 196).
    let counts: Vec<(Book, usize)> = Book::ALL.iter().map(|&b| (b, corpus.book(b).count())).collect();
    eprintln!("documents per book: {counts:?}; skipped {}", corpus.skipped().len());
    for (book, min) in [(Book::Book, 90), (Book::Nomicon, 40), (Book::Reference, 80), (Book::RustByExample, 150)] {
        let n = corpus.book(book).count();
        assert!(n >= min, "{book}: {n} documents, expected at least {min}");
    }

    // Sorted, unique ids; every document non-empty, titled, free of markup, and from its book's directory.
    assert!(corpus.documents().windows(2).all(|w| w[0].id < w[1].id));
    for d in corpus.documents() {
        assert!(d.id.starts_with(&format!("{}/", d.book.dir_name())) && d.id.ends_with(".html"), "{}", d.id);
        assert!(d.chars() >= 64, "{} is a stub", d.id);
        assert!(!d.title.is_empty() && !d.title.contains(" - The Rust"), "{}: title {:?}", d.id, d.title);
        for m in MARKUP {
            assert!(!d.text.contains(m), "{}: `{m}` left in the text", d.id);
        }
        assert!(!d.text.contains('\u{a0}'), "{}: no-break space left", d.id);
        assert!(!d.text.ends_with(char::is_whitespace), "{}", d.id);
        for bad in ["/print.html", "/toc.html", "/404.html", "first-edition/", "second-edition/", "2018-edition/"] {
            assert!(!d.id.contains(bad), "{} should have been skipped", d.id);
        }
        assert!(!d.id.starts_with("rust-by-example/ja/") && !d.id.starts_with("rust-by-example/zh/"), "{}", d.id);
    }
    let skipped = |r: SkipReason| corpus.skipped().iter().filter(|s| s.reason == r).count();
    assert!(skipped(SkipReason::Translation) > 100, "Rust by Example's translations are skipped");
    assert!(skipped(SkipReason::Redirect) > 10);
    assert!(corpus.get("book/index.html").is_none(), "mdBook's copy of the first chapter is a duplicate");

    // Known text, with inline markup (`<em>`) stripped and prose re-flowed.
    let own = corpus.get("book/ch04-01-what-is-ownership.html").expect("ownership chapter");
    assert!(
        own.text.contains("Ownership is a set of rules that govern how a Rust program manages memory."),
        "{}",
        &own.text[..300]
    );
    assert!(own.text.contains("- Each value in Rust has an owner."));
    assert!(own.text.contains("let s = String::from(\"hello\");"));
    assert!(!own.text.contains("fn main() {\n    {"), "hidden `fn main` wrapper lines are dropped");
    let nomicon = corpus.book(Book::Nomicon).map(|d| d.text.as_str()).collect::<String>();
    assert!(nomicon.contains("unsafe"));
    let reference = corpus.get("reference/items/functions.html").expect("functions page");
    assert!(reference.text.contains("Functions are declared with the keyword fn"), "{}", &reference.text[..400]);
    assert!(!reference.text.contains("[items.fn"), "rule anchors are dropped");
    assert!(!reference.text.contains("Show Railroad"));
    let hello = corpus.get("rust-by-example/hello.html").expect("RBE hello");
    assert!(hello.text.contains("println!(\"Hello World!\");"));

    // Splits: a partition, every split non-empty, stable across calls.
    let cfg = SplitConfig::default();
    let sizes: Vec<usize> = Split::ALL.iter().map(|&s| corpus.split(s, &cfg).len()).collect();
    eprintln!("split sizes (train, validation, test): {sizes:?}");
    assert_eq!(sizes.iter().sum::<usize>(), corpus.len());
    assert!(sizes.iter().all(|&n| n > 0));
    assert!(sizes[0] > corpus.len() * 8 / 10);

    // Passages over everything: valid offsets, bounded, ids round trip.
    let table = PassageTable::build(corpus.documents(), &PassageConfig::default()).unwrap();
    eprintln!("passages (800 chars): {}", table.len());
    assert!(table.len() > corpus.len() * 3);
    for p in table.iter().step_by(7) {
        assert!(p.text().chars().count() <= 800 && !p.text().is_empty());
        assert_eq!(table.by_key(p.key).unwrap(), p);
        assert_eq!(table.by_id(&p.id().to_string().parse().unwrap()).unwrap(), p);
    }

    // Tokenize the test split with the byte encoder and evaluate windows over it.
    let test: Vec<&Document> = corpus.split(Split::Test, &cfg);
    let toks = TokenizedSplit::encode(&test, &ByteEncoder).unwrap();
    assert_eq!(toks.num_tokens(), test.iter().map(|d| d.text.len()).sum::<usize>());
    let scored: usize = toks.perplexity_windows(512, 256).unwrap().map(|(_, w)| w.targets().len()).sum();
    assert_eq!(scored, test.iter().map(|d| d.text.len().saturating_sub(1)).sum::<usize>());

    // Content hash is stable for the same docs and options.
    assert_eq!(corpus.content_hash(), Corpus::from_documents(corpus.documents().to_vec()).content_hash());

    // Keeping hidden lines only adds text (for one small book, to keep the test fast).
    let root = corpus.root().unwrap();
    let opts = CorpusOptions { books: vec![Book::Nomicon], ..CorpusOptions::default() };
    let drop = Corpus::load(root, &opts).unwrap();
    let keep = Corpus::load(root, &CorpusOptions { hidden_lines: HiddenLines::Keep, ..opts }).unwrap();
    assert_eq!(drop.len(), keep.len());
    let (a, b): (usize, usize) =
        (drop.documents().iter().map(Document::chars).sum(), keep.documents().iter().map(Document::chars).sum());
    assert!(b > a, "keeping hidden lines adds text ({a} -> {b})");
    assert!(split_passages(&keep.documents()[0].text, 100).len() > 1);
}
