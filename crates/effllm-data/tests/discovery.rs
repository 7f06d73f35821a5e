//! Discovery and loading on a synthetic documentation tree: which pages become documents, in which order, and
//! why the others are skipped.

mod common;

use common::{TempDir, mdbook_page, redirect_page};
use effllm_data::{
    Book, Corpus, CorpusOptions, DataError, HiddenLines, SkipReason, Split, SplitConfig, discover_pages, docs_dir,
};

const LONG: &str = "This paragraph is long enough to pass the stub filter of the corpus loader easily.";

fn chapter(title: &str, book: Book, body: &str) -> String {
    mdbook_page("en", title, book.title(), &format!("<h1>{title}</h1><p>{LONG}</p>{body}"))
}

fn tree() -> TempDir {
    let t = TempDir::new("tree");
    let b = Book::Book;
    t.write("book/ch01-00-intro.html", &chapter("Intro", b, "<p>first chapter</p>"));
    t.write("book/index.html", &chapter("Intro", b, "<p>first chapter</p>")); // mdBook's copy
    t.write("book/ch02-00-guessing.html", &chapter("Guessing", b, "<pre><code><span class=\"boring\">fn main() {\n</span>let x = 1;\n<span class=\"boring\">}</span></code></pre>"));
    t.write("book/print.html", &chapter("All", b, "<p>everything</p>"));
    t.write("book/toc.html", "<html><body><ol><li>toc</li></ol></body></html>");
    t.write("book/404.html", &chapter("Not found", b, ""));
    t.write("book/first-edition/ownership.html", &chapter("Old", b, "<p>no longer distributed</p>"));
    t.write("book/ch17-02-old.html", &redirect_page("ch18-02.html"));
    t.write("book/searchindex.json", "{}");
    t.write("book/theme/index.html", &chapter("Theme", b, ""));
    t.write("nomicon/intro.html", &chapter("Meet Safe and Unsafe", Book::Nomicon, ""));
    t.write("nomicon/stub.html", &mdbook_page("en", "Stub", Book::Nomicon.title(), "<h1>Stub</h1>"));
    t.write("reference/items/functions.html", &chapter("Functions", Book::Reference, ""));
    t.write("reference/items.html", &chapter("Items", Book::Reference, ""));
    t.write("rust-by-example/hello.html", &chapter("Hello World", Book::RustByExample, ""));
    t.write(
        "rust-by-example/ja/hello.html",
        &mdbook_page("ja", "Hello World", "Rust By Example 日本語版", &format!("<h1>こんにちは</h1><p>{LONG}</p>")),
    );
    t
}

#[test]
fn loads_documents_in_sorted_order_and_skips_the_rest() {
    let t = tree();
    let c = Corpus::load(t.path(), &CorpusOptions::default()).unwrap();
    let ids: Vec<&str> = c.documents().iter().map(|d| d.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "book/ch01-00-intro.html",
            "book/ch02-00-guessing.html",
            "nomicon/intro.html",
            "reference/items.html",
            "reference/items/functions.html",
            "rust-by-example/hello.html",
        ]
    );
    let skipped: Vec<(&str, SkipReason)> = c.skipped().iter().map(|s| (s.id.as_str(), s.reason)).collect();
    assert_eq!(
        skipped,
        [
            ("book/ch17-02-old.html", SkipReason::Redirect),
            ("book/index.html", SkipReason::Duplicate),
            ("nomicon/stub.html", SkipReason::Stub),
            ("rust-by-example/ja/hello.html", SkipReason::Translation),
        ]
    );
    let intro = c.get("book/ch01-00-intro.html").unwrap();
    assert_eq!(intro.title, "Intro");
    assert_eq!(intro.book, Book::Book);
    assert_eq!(intro.text, format!("Intro\n\n{LONG}\n\nfirst chapter"));
    assert!(!c.get("book/ch02-00-guessing.html").unwrap().text.contains("fn main"));
    assert_eq!(c.book(Book::Reference).count(), 2);
    assert_eq!(c.root(), Some(t.path()));
}

#[test]
fn options_select_books_hidden_lines_and_translations() {
    let t = tree();
    let opts = CorpusOptions {
        books: vec![Book::Book, Book::RustByExample],
        hidden_lines: HiddenLines::Keep,
        english_only: false,
        min_chars: 0,
        threads: 1,
    };
    let c = Corpus::load(t.path(), &opts).unwrap();
    assert!(c.get("book/ch02-00-guessing.html").unwrap().text.contains("fn main() {\nlet x = 1;\n}"));
    assert!(c.get("rust-by-example/ja/hello.html").is_some());
    assert!(c.book(Book::Nomicon).next().is_none());
    // Same documents with any number of threads.
    let c4 = Corpus::load(t.path(), &CorpusOptions { threads: 4, ..opts.clone() }).unwrap();
    assert_eq!(c.documents(), c4.documents());
    assert_eq!(c.content_hash(), c4.content_hash());
    // Options change the text, hence the content hash.
    let dropped = Corpus::load(t.path(), &CorpusOptions { hidden_lines: HiddenLines::Drop, ..opts }).unwrap();
    assert_ne!(dropped.content_hash(), c.content_hash());
}

#[test]
fn discover_lists_files_only() {
    let t = tree();
    let pages = discover_pages(t.path(), &[Book::Book]).unwrap();
    let ids: Vec<&str> = pages.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(
        ids,
        ["book/ch01-00-intro.html", "book/ch02-00-guessing.html", "book/ch17-02-old.html", "book/index.html"]
    );
    assert!(pages.iter().all(|p| p.path.is_file() && p.book == Book::Book));
}

#[test]
fn missing_docs_say_how_to_install_them() {
    let t = TempDir::new("empty");
    let err = Corpus::load(t.path(), &CorpusOptions::default()).unwrap_err();
    assert!(matches!(err, DataError::BookMissing { book: "book", .. }), "{err}");
    assert!(err.to_string().contains("rustup component add rust-docs"), "{err}");

    let missing = t.path().join("nope");
    let err = docs_dir(Some(&missing)).unwrap_err();
    assert!(matches!(err, DataError::DocsNotFound { .. }));
    assert!(err.to_string().contains("rustup component add rust-docs"), "{err}");
    let err = Corpus::load(&missing, &CorpusOptions::default()).unwrap_err();
    assert!(err.to_string().contains("rustup component add rust-docs"), "{err}");
}

#[test]
fn a_sysroot_is_accepted_for_the_docs_directory() {
    let t = TempDir::new("sysroot");
    let docs = t.path().join("share/doc/rust/html");
    std::fs::create_dir_all(&docs).unwrap();
    assert_eq!(docs_dir(Some(t.path())).unwrap(), docs);
    assert_eq!(docs_dir(Some(&docs)).unwrap(), docs);
}

#[test]
fn splits_partition_the_documents() {
    let t = tree();
    let c = Corpus::load(t.path(), &CorpusOptions::default()).unwrap();
    let cfg = SplitConfig { seed: 3, validation_per_mille: 300, test_per_mille: 300 };
    let mut all: Vec<&str> = Split::ALL.iter().flat_map(|&s| c.split(s, &cfg)).map(|d| d.id.as_str()).collect();
    all.sort_unstable();
    assert_eq!(all, c.documents().iter().map(|d| d.id.as_str()).collect::<Vec<_>>());
    let stats = c.stats(&cfg);
    assert_eq!(stats.books.iter().map(|b| b.documents).sum::<usize>(), c.len());
    assert_eq!(stats.splits.iter().map(|s| s.documents).sum::<usize>(), c.len());
    assert_eq!(stats.skipped, 4);
    assert!(stats.to_string().contains("rust-by-example"));
}
