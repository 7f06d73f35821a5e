//! Passages: the optimised splitter against the naive reference, offsets back into the text, and ids.

use effllm_data::{Book, Document, PassageConfig, PassageId, PassageTable, passage_key, reference, split_passages};
use proptest::prelude::*;

/// Text made of words, spaces, newlines, blank lines (some with spaces), tabs and multi-byte characters.
fn text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        6 => "[a-z]{1,12}",
        3 => Just(" ".to_string()),
        2 => Just("\n".to_string()),
        1 => Just("\n\n".to_string()),
        1 => Just("\n  \n".to_string()),
        1 => Just("\t".to_string()),
        1 => Just("é".to_string()),
        1 => Just("🦀".to_string()),
        1 => Just("\u{a0}".to_string()),
        1 => Just("\u{2003}".to_string()),
        1 => "[a-z]{20,60}",
    ];
    proptest::collection::vec(piece, 0..80).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn matches_the_reference(t in text(), max in 1usize..120) {
        prop_assert_eq!(split_passages(&t, max), reference::split_passages(&t, max));
    }

    #[test]
    fn passages_are_bounded_trimmed_ordered_and_cover_the_text(t in text(), max in 1usize..120) {
        let ps = split_passages(&t, max);
        let mut last_end = 0;
        for r in &ps {
            let p = &t[r.clone()]; // offsets are char boundaries, or this panics
            prop_assert!(!p.is_empty());
            prop_assert!(p.chars().count() <= max, "{:?} longer than {}", p, max);
            prop_assert_eq!(p.trim(), p);
            prop_assert!(r.start >= last_end);
            prop_assert!(t[last_end..r.start].chars().all(char::is_whitespace), "non-whitespace dropped before {:?}", r);
            last_end = r.end;
        }
        prop_assert!(t[last_end..].chars().all(char::is_whitespace));
        // All non-whitespace characters survive, in order.
        let kept: String = ps.iter().flat_map(|r| t[r.clone()].chars()).filter(|c| !c.is_whitespace()).collect();
        let all: String = t.chars().filter(|c| !c.is_whitespace()).collect();
        prop_assert_eq!(kept, all);
    }

    #[test]
    fn paragraphs_that_fit_are_never_split(paras in proptest::collection::vec("[a-z]{1,10}( [a-z]{1,10}){0,5}", 1..12), max in 70usize..200) {
        let t = paras.join("\n\n");
        for r in split_passages(&t, max) {
            let p = &t[r];
            // A passage is a run of whole paragraphs.
            for piece in p.split("\n\n") {
                prop_assert!(paras.iter().any(|q| q == piece), "{:?} is not a paragraph", piece);
            }
        }
    }

    #[test]
    fn table_ids_round_trip(texts in proptest::collection::vec(text(), 1..8), max in 1usize..100) {
        let docs: Vec<Document> = texts.into_iter().enumerate().map(|(i, t)| Document::new(format!("book/d{i}.html"), Book::Book, "t", t)).collect();
        let table = PassageTable::build(&docs, &PassageConfig { max_chars: max }).unwrap();
        prop_assert_eq!(table.len(), docs.iter().map(|d| split_passages(&d.text, max).len()).sum::<usize>());
        for (pos, p) in table.iter().enumerate() {
            let id = p.id();
            let parsed: PassageId = id.to_string().parse().unwrap();
            prop_assert_eq!(&parsed, &id);
            prop_assert_eq!(table.by_id(&id).unwrap(), p.clone());
            prop_assert_eq!(Some(p.key), passage_key(&id.doc, id.index));
            prop_assert_eq!(table.position_of_key(p.key), Some(pos));
            prop_assert_eq!(&p.document.text[p.range.clone()], p.text());
        }
    }
}

#[test]
fn hand_written_cases() {
    let t =
        "Heading\n\nFirst paragraph that is rather long.\nSecond line.\n\n    let x = 1;\n    let y = 2;\n\n- a\n- b";
    let ps: Vec<&str> = split_passages(t, 40).into_iter().map(|r| &t[r]).collect();
    // The 49-character second paragraph is cut at its newline; the code paragraph loses its leading indentation
    // (passages are trimmed) and merges with the list (25 + 2 + 7 <= 40 characters).
    assert_eq!(
        ps,
        ["Heading", "First paragraph that is rather long.", "Second line.", "let x = 1;\n    let y = 2;\n\n- a\n- b"]
    );
    assert_eq!(ps, reference::split_passages(t, 40).into_iter().map(|r| &t[r]).collect::<Vec<_>>());
}
