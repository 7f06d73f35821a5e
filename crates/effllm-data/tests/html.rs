//! HTML to text: hand-written mdBook snippets, and properties of the scanner and the entity decoder.

mod common;

use effllm_data::{ExtractOptions, HiddenLines, decode_entities, extract_page, html_to_text, reference};
use proptest::prelude::*;

fn check(html: &str, want: &str) {
    let got = html_to_text(html, &ExtractOptions::default());
    assert_eq!(got, want, "\nhtml: {html}");
}

#[test]
fn inline_markup_and_entities() {
    check(
        "<p><em>Ownership</em> is a <strong>set</strong> of <a href=\"x.html#y\">rules</a>.</p>",
        "Ownership is a set of rules.",
    );
    check(
        "<p>Use <code>Vec&lt;T&gt;</code> &amp; <code>&amp;str</code> &mdash; it&rsquo;s fine.</p>",
        "Use Vec<T> & &str — it’s fine.",
    );
    check("<p>&#x1F980; &#129408; &copy; &euro;&hellip;</p>", "🦀 🦀 © €…");
    check("<p>AT&T &notanentity; &amp</p>", "AT&T &notanentity; &amp");
    check("<p>a<!-- hidden --><!--x-->b</p>", "ab");
}

#[test]
fn nested_blocks_and_headings() {
    check(
        "<h1 id=\"a\"><a class=\"header\" href=\"#a\">Title</a></h1>\n<section class=\"note\">\n<h3>Note</h3>\n<p>One\ntwo</p>\n</section>\n<blockquote><p>Quoted</p></blockquote>",
        "Title\n\nNote\n\nOne two\n\nQuoted",
    );
    check("<div><p>a</p>text<p>b</p></div>", "a\n\ntext\n\nb");
    check(
        "<figure class=\"listing\"><span class=\"file-name\">Filename: src/main.rs</span>\n<pre><code>fn main() {}</code></pre>\n<figcaption>Listing 1-1: Hi</figcaption></figure>",
        "Filename: src/main.rs\n\nfn main() {}\n\nListing 1-1: Hi",
    );
}

#[test]
fn code_block_with_highlighting_spans_and_hidden_lines() {
    let html = "<pre class=\"playground\"><code class=\"language-rust edition2024\"><span class=\"boring\">#![allow(unused)]\n</span><span class=\"boring\">fn main() {\n</span><span class=\"hljs-keyword\">let</span> <span class=\"hljs-keyword\">mut</span> s = <span class=\"hljs-type\">String</span>::<span class=\"hljs-title function_ invoke__\">from</span>(<span class=\"hljs-string\">\"hello\"</span>);\n\n    s.<span class=\"hljs-title function_ invoke__\">push_str</span>(<span class=\"hljs-string\">\", world!\"</span>); <span class=\"hljs-comment\">// &lt;- appends</span>\n<span class=\"boring\">}</span></code></pre>";
    check(html, "let mut s = String::from(\"hello\");\n\n    s.push_str(\", world!\"); // <- appends");
    let keep = html_to_text(html, &ExtractOptions { hidden_lines: HiddenLines::Keep });
    assert_eq!(
        keep,
        "#![allow(unused)]\nfn main() {\nlet mut s = String::from(\"hello\");\n\n    s.push_str(\", world!\"); // <- appends\n}"
    );
}

#[test]
fn console_output_and_tabs_verbatim() {
    check(
        "<pre><code class=\"language-console\">$ cargo run\n   Compiling x v0.1.0\n\tdone</code></pre>",
        "$ cargo run\n   Compiling x v0.1.0\n\tdone",
    );
    check("<p>before</p><pre><code>a\n\n\nb</code></pre><p>after</p>", "before\n\na\n\n\nb\n\nafter");
}

#[test]
fn scripts_styles_buttons_svg_dropped() {
    check("<p>x<script>document.write('<p>no</p>')</script>y</p><style>.a{}</style>", "xy");
    check(
        "<div class=\"grammar-container\"><p><span class=\"grammar-text\">Item</span> → <span class=\"grammar-literal\">fn</span></p><p><button class=\"grammar-toggle-railroad\">Show Railroad</button></p></div><div class=\"grammar-railroad grammar-hidden\"><svg><text>Item</text></svg></div><p>Prose</p>",
        "Item → fn\n\nProse",
    );
    check("<p>a<SCRIPT type=x>b</SCRIPT >c</p>", "ac");
}

#[test]
fn full_mdbook_page() {
    let body = "<h2 id=\"what\"><a class=\"header\" href=\"#what\">What Is Ownership?</a></h2>\n<p><em>Ownership</em> is a set of rules.</p>\n<ul>\n<li>Each value has an owner.</li>\n<li>One owner at a time.</li>\n</ul>";
    let html = common::mdbook_page("en", "What Is Ownership?", "The Rust Programming Language", body);
    let p = extract_page(&html, &ExtractOptions::default());
    assert!(p.has_main && !p.redirect);
    assert_eq!(p.title.as_deref(), Some("What Is Ownership? - The Rust Programming Language"));
    assert_eq!(
        p.text,
        "What Is Ownership?\n\nOwnership is a set of rules.\n\n- Each value has an owner.\n- One owner at a time."
    );
    let r = extract_page(&common::redirect_page("ch01.html"), &ExtractOptions::default());
    assert!(!r.has_main && r.redirect && r.text.is_empty());
}

/// Fragments that exercise the decoder's branches.
fn entity_soup() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("&".to_string()),
        Just("&amp;".to_string()),
        Just("&lt".to_string()),
        Just("&#".to_string()),
        Just("&#x".to_string()),
        Just("&nbsp;".to_string()),
        Just("&rsquo;".to_string()),
        Just(";".to_string()),
        Just("#".to_string()),
        Just("x".to_string()),
        "[0-9a-fA-F]{1,8}",
        "[a-zA-Z]{1,6}",
        "\\PC{0,3}",
    ];
    proptest::collection::vec(piece, 0..20).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn decode_matches_reference(s in entity_soup()) {
        prop_assert_eq!(decode_entities(&s).into_owned(), reference::decode_entities(&s));
    }

    #[test]
    fn plain_text_is_collapsed(s in "[a-z \\t\\n.,!]{0,80}") {
        // Without `<` or `&`, conversion is whitespace collapsing.
        let want = s.split_ascii_whitespace().collect::<Vec<_>>().join(" ");
        prop_assert_eq!(html_to_text(&s, &ExtractOptions::default()), want);
    }

    #[test]
    fn arbitrary_input_never_panics(s in "(\\PC|<|>|&|/|!|-|\"|'|=| ){0,200}") {
        let t = html_to_text(&s, &ExtractOptions::default());
        prop_assert!(!t.ends_with([' ', '\n']));
        let _ = extract_page(&s, &ExtractOptions::default());
    }

    #[test]
    fn markup_soup_has_no_tags_left(words in proptest::collection::vec("[a-z]{1,8}", 1..20), tags in proptest::collection::vec(0usize..8, 1..20)) {
        const OPEN: [&str; 8] = ["<p>", "<em>", "<span class=\"x\">", "<li>", "<code>", "<div>", "<h2>", "<br>"];
        const CLOSE: [&str; 8] = ["</p>", "</em>", "</span>", "</li>", "</code>", "</div>", "</h2>", ""];
        let mut html = String::new();
        for (w, t) in words.iter().zip(tags.iter().cycle()) {
            html.push_str(OPEN[*t]);
            html.push_str(w);
            html.push_str(CLOSE[*t]);
            html.push(' ');
        }
        let text = html_to_text(&html, &ExtractOptions::default());
        prop_assert!(!text.contains('<') && !text.contains('>'), "{}", text);
        // Every word survives, in order.
        let got: Vec<&str> = text.split(|c: char| !c.is_ascii_lowercase()).filter(|w| !w.is_empty()).collect();
        prop_assert_eq!(got, words.iter().map(String::as_str).collect::<Vec<_>>());
        prop_assert!(!text.contains("\n\n\n"));
    }
}
