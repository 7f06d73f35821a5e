//! The token cache: round trips, corrupted and hostile files, rebuilds, atomic writes, encoder errors.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};

use common::TempDir;
use effllm_data::cache::{HEADER_LEN, MAGIC, VERSION};
use effllm_data::{
    Book, ByteEncoder, CacheFormatError, CacheKey, CacheStatus, Corpus, DataError, Document, FnEncoder, Split,
    SplitConfig, TextEncoder, TokenCache, TokenizedSplit,
};
use proptest::prelude::*;

fn sample() -> TokenizedSplit {
    TokenizedSplit::from_parts(
        vec!["book/a.html".into(), "nomicon/é.html".into(), "empty".into()],
        vec![vec![1, 2, 3], vec![u32::MAX, 0], vec![]],
    )
}

fn key() -> CacheKey {
    CacheKey::new("docs-hash", "encoder-v1", "train")
}

fn docs() -> Vec<Document> {
    (0..12)
        .map(|i| Document::new(format!("book/p{i:02}.html"), Book::Book, "t", format!("text of page {i} ✓")))
        .collect()
}

fn tokenized() -> impl Strategy<Value = TokenizedSplit> {
    proptest::collection::vec(("\\PC{0,12}", proptest::collection::vec(any::<u32>(), 0..40)), 0..8).prop_map(|v| {
        let (ids, toks): (Vec<String>, Vec<Vec<u32>>) = v.into_iter().unzip();
        TokenizedSplit::from_parts(ids, toks)
    })
}

#[test]
fn round_trip_and_accessors() {
    let s = sample();
    let bytes = s.to_bytes(&key());
    assert_eq!(&bytes[..8], &MAGIC);
    assert_eq!(bytes.len(), HEADER_LEN + (4 + 11) + (4 + 15) + (4 + 5) + 3 * 8 + 5 * 4);
    let back = TokenizedSplit::from_bytes(&bytes, Some(&key())).unwrap();
    assert_eq!(back, s);
    assert_eq!(back.document(1), [u32::MAX, 0]);
    assert_eq!(back.doc_id(1), "nomicon/é.html");
    assert_eq!(back.document(2), [] as [u32; 0]);
    assert_eq!(back.num_tokens(), 5);
    assert_eq!(back.tokens(), [1, 2, 3, u32::MAX, 0]);
    assert_eq!(back.documents().map(|(id, t)| (id.len(), t.len())).collect::<Vec<_>>(), [(11, 3), (15, 2), (5, 0)]);
    let empty = TokenizedSplit::default();
    assert_eq!(TokenizedSplit::from_bytes(&empty.to_bytes(&key()), None).unwrap(), empty);
}

#[test]
fn typed_errors_for_bad_headers() {
    let good = sample().to_bytes(&key());
    let with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = good.clone();
        f(&mut b);
        TokenizedSplit::from_bytes(&b, Some(&key())).unwrap_err()
    };
    assert!(matches!(with(&|b| b[0] = b'X'), CacheFormatError::BadMagic { .. }));
    assert_eq!(
        with(&|b| b[8..12].copy_from_slice(&2u32.to_le_bytes())),
        CacheFormatError::UnsupportedVersion { found: 2, supported: VERSION }
    );
    assert_eq!(with(&|b| b[12] = 1), CacheFormatError::Reserved(1));
    assert_eq!(with(&|b| b[20] ^= 1), CacheFormatError::KeyMismatch);
    assert_eq!(with(&|b| b[80] ^= 1), CacheFormatError::ChecksumMismatch);
    assert_eq!(with(&|b| *b.last_mut().unwrap() ^= 1), CacheFormatError::ChecksumMismatch);
    assert!(matches!(with(&|b| b.truncate(50)), CacheFormatError::TruncatedHeader { len: 50, .. }));
    assert!(matches!(with(&|b| b.push(0)), CacheFormatError::SizeMismatch { .. }));
    // Hostile counts: huge values must be rejected by arithmetic, not by trying to allocate.
    for field in [48usize, 56, 64] {
        for v in [u64::MAX, u64::MAX / 4, 1 << 40] {
            let e = with(&|b| b[field..field + 8].copy_from_slice(&v.to_le_bytes()));
            assert!(matches!(e, CacheFormatError::SizeMismatch { .. }), "field {field} = {v}: {e:?}");
        }
    }
    // Another key is accepted without a key check.
    let other = sample().to_bytes(&CacheKey::new("other", "x", "y"));
    assert!(TokenizedSplit::from_bytes(&other, None).is_ok());
}

/// Rewrites the payload checksum so that structural checks behind it are reached.
fn reseal(b: &mut [u8]) {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(&b[..72]);
    h.update(&b[HEADER_LEN..]);
    let d = h.finalize();
    b[72..104].copy_from_slice(&d);
}

#[test]
fn structural_errors_behind_a_valid_checksum() {
    let good = sample().to_bytes(&key());
    // First id length larger than the section.
    let mut b = good.clone();
    b[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&1000u32.to_le_bytes());
    reseal(&mut b);
    assert!(matches!(TokenizedSplit::from_bytes(&b, None), Err(CacheFormatError::BadIds(_))));
    // Invalid UTF-8 in an id.
    let mut b = good.clone();
    b[HEADER_LEN + 4] = 0xFF;
    reseal(&mut b);
    assert_eq!(TokenizedSplit::from_bytes(&b, None), Err(CacheFormatError::IdNotUtf8 { index: 0 }));
    // Token counts not summing to n_tokens (move one token from document 0 to document 1... then break the sum).
    let counts = HEADER_LEN + (4 + 11) + (4 + 15) + (4 + 5);
    let mut b = good.clone();
    b[counts..counts + 8].copy_from_slice(&4u64.to_le_bytes());
    reseal(&mut b);
    assert!(matches!(TokenizedSplit::from_bytes(&b, None), Err(CacheFormatError::CountSum { sum: 6, n_tokens: 5 })));
    let mut b = good.clone();
    b[counts..counts + 8].copy_from_slice(&u64::MAX.to_le_bytes());
    reseal(&mut b);
    assert!(matches!(TokenizedSplit::from_bytes(&b, None), Err(CacheFormatError::CountSum { .. })));
    // Header counts changed consistently (one more document, 8 fewer id bytes) and resealed: caught by the id parse.
    let mut b = good.clone();
    b[48..56].copy_from_slice(&4u64.to_le_bytes());
    b[64..72].copy_from_slice(&(43u64 - 8).to_le_bytes());
    reseal(&mut b);
    let e = TokenizedSplit::from_bytes(&b, None).unwrap_err();
    assert!(matches!(e, CacheFormatError::BadIds(_)), "{e:?}");
    // A header field changed without resealing: the checksum covers the header.
    let mut b = good.clone();
    b[48..56].copy_from_slice(&4u64.to_le_bytes());
    b[64..72].copy_from_slice(&(43u64 - 8).to_le_bytes());
    assert_eq!(TokenizedSplit::from_bytes(&b, None), Err(CacheFormatError::ChecksumMismatch));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn round_trip(t in tokenized()) {
        let k = key();
        prop_assert_eq!(TokenizedSplit::from_bytes(&t.to_bytes(&k), Some(&k)).unwrap(), t);
    }

    #[test]
    fn every_truncation_is_an_error(t in tokenized()) {
        let b = t.to_bytes(&key());
        for len in 0..b.len() {
            prop_assert!(TokenizedSplit::from_bytes(&b[..len], Some(&key())).is_err(), "prefix {} accepted", len);
        }
    }

    #[test]
    fn corrupted_bytes_are_an_error_never_a_panic(t in tokenized(), flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4)) {
        let mut b = t.to_bytes(&key());
        for (i, x) in &flips {
            let i = i.index(b.len());
            b[i] ^= x;
        }
        prop_assert!(TokenizedSplit::from_bytes(&b, Some(&key())).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic(mut b in proptest::collection::vec(any::<u8>(), 0..300), magic in any::<bool>()) {
        if magic && b.len() >= 16 {
            b[..8].copy_from_slice(&MAGIC);
            b[8..12].copy_from_slice(&VERSION.to_le_bytes());
            b[12..16].fill(0);
        }
        let _ = TokenizedSplit::from_bytes(&b, None);
    }
}

#[test]
fn load_or_build_hits_and_rebuilds() {
    let dir = TempDir::new("cache");
    let cache = TokenCache::new(dir.path().join("nested/corpus"));
    let docs = docs();
    let refs: Vec<&Document> = docs.iter().collect();
    let calls = AtomicUsize::new(0);
    let enc = FnEncoder::new("bytes+count", |t: &str| {
        calls.fetch_add(1, Ordering::Relaxed);
        ByteEncoder.encode(t)
    });

    let (a, s) = cache.load_or_build(&refs, "train", &enc).unwrap();
    assert_eq!(s, CacheStatus::Built);
    assert_eq!(calls.load(Ordering::Relaxed), docs.len());
    assert_eq!(a.document(3), docs[3].text.as_bytes().iter().map(|&b| u32::from(b)).collect::<Vec<_>>());
    let (b, s) = cache.load_or_build(&refs, "train", &enc).unwrap();
    assert_eq!((s, &b), (CacheStatus::Hit, &a));
    assert_eq!(calls.load(Ordering::Relaxed), docs.len());

    // A corrupted file is rebuilt, and the rebuild is reported.
    let key = CacheKey::for_documents(&refs, &enc, "train");
    let path = cache.path(&key);
    assert!(path.file_name().unwrap().to_str().unwrap().starts_with("train-"));
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 0xFF;
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(cache.load(&key), Err(DataError::Cache { source: CacheFormatError::ChecksumMismatch, .. })));
    let (c, s) = cache.load_or_build(&refs, "train", &enc).unwrap();
    assert_eq!((s, &c), (CacheStatus::Rebuilt(CacheFormatError::ChecksumMismatch), &a));
    std::fs::write(&path, &bytes[..10]).unwrap();
    assert!(matches!(
        cache.load_or_build(&refs, "train", &enc).unwrap().1,
        CacheStatus::Rebuilt(CacheFormatError::TruncatedHeader { .. })
    ));
    assert_eq!(cache.load_or_build(&refs, "train", &enc).unwrap().1, CacheStatus::Hit);

    // Another fingerprint, another document set or another label: another file.
    let enc2 = FnEncoder::new("bytes-v2", |t: &str| ByteEncoder.encode(t));
    assert_eq!(cache.load_or_build(&refs, "train", &enc2).unwrap().1, CacheStatus::Built);
    assert_eq!(cache.load_or_build(&refs[1..], "train", &enc).unwrap().1, CacheStatus::Built);
    assert_eq!(cache.load_or_build(&refs, "valid", &enc).unwrap().1, CacheStatus::Built);
    let mut changed = docs.clone();
    changed[0].text.push('!');
    let changed_refs: Vec<&Document> = changed.iter().collect();
    assert_eq!(cache.load_or_build(&changed_refs, "train", &enc).unwrap().1, CacheStatus::Built);

    // No temporary files are left behind.
    let names: Vec<String> =
        std::fs::read_dir(cache.dir()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(names.len(), 5, "{names:?}");
    assert!(names.iter().all(|n| n.ends_with(".tok") && !n.starts_with('.')), "{names:?}");
}

#[test]
fn split_helper_and_missing_file() {
    let dir = TempDir::new("split");
    let cache = TokenCache::new(dir.path());
    let corpus = Corpus::from_documents(docs());
    let cfg = SplitConfig { seed: 0, validation_per_mille: 300, test_per_mille: 300 };
    let key = CacheKey::for_documents(&corpus.split(Split::Test, &cfg), &ByteEncoder, "test");
    assert!(cache.load(&key).unwrap().is_none());
    let (t, s) = cache.split(&corpus, Split::Test, &cfg, &ByteEncoder).unwrap();
    assert_eq!(s, CacheStatus::Built);
    let want: Vec<&str> = corpus.split(Split::Test, &cfg).iter().map(|d| d.id.as_str()).collect();
    assert_eq!(t.doc_ids(), want);
    assert!(cache.load(&key).unwrap().is_some());
    let bad = SplitConfig { validation_per_mille: 900, ..cfg };
    assert!(matches!(cache.split(&corpus, Split::Test, &bad, &ByteEncoder), Err(DataError::InvalidConfig(_))));
}

#[test]
fn encoder_errors_name_the_document() {
    let docs = docs();
    let refs: Vec<&Document> = docs.iter().collect();
    let enc = FnEncoder::new("picky", |t: &str| if t.contains('7') { Err("no sevens".into()) } else { Ok(vec![1]) });
    let err = TokenizedSplit::encode(&refs, &enc).unwrap_err();
    match &err {
        DataError::Encode { fingerprint, document, .. } => {
            assert_eq!(fingerprint, "picky");
            assert_eq!(document, "book/p07.html");
        }
        e => panic!("{e:?}"),
    }
    assert!(err.to_string().contains("no sevens") || std::error::Error::source(&err).is_some());
}

#[test]
fn parallel_encoding_keeps_document_order() {
    let docs: Vec<Document> =
        (0..200).map(|i| Document::new(format!("d{i:03}"), Book::Reference, "t", "x".repeat(i % 17))).collect();
    let refs: Vec<&Document> = docs.iter().collect();
    let enc = FnEncoder::new("len", |t: &str| Ok(vec![t.len() as u32]));
    let t = TokenizedSplit::encode(&refs, &enc).unwrap();
    for (i, (id, toks)) in t.documents().enumerate() {
        assert_eq!(id, docs[i].id);
        assert_eq!(toks, [(i % 17) as u32]);
    }
}

#[test]
fn passage_tokens_are_cached_by_passage_id() {
    use effllm_data::{PassageConfig, PassageTable};
    let dir = TempDir::new("passages");
    let cache = TokenCache::new(dir.path());
    let docs = vec![
        Document::new("book/a.html", Book::Book, "A", "first paragraph\n\nsecond paragraph"),
        Document::new("book/b.html", Book::Book, "B", "only one"),
    ];
    let table = PassageTable::build(&docs, &PassageConfig { max_chars: 16 }).unwrap();
    let direct = table.tokenize(&ByteEncoder, None).unwrap();
    assert_eq!(direct.doc_ids(), ["book/a.html#0", "book/a.html#1", "book/b.html#0"]);
    assert_eq!(direct.document(1), b"second paragraph".map(u32::from));
    let cached = table.tokenize(&ByteEncoder, Some(&cache)).unwrap();
    assert_eq!(cached, direct);
    let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(files.len(), 1);
    assert!(files[0].to_str().unwrap().starts_with("passages-16-"));
    let items =
        [("book/a.html#0", "first paragraph"), ("book/a.html#1", "second paragraph"), ("book/b.html#0", "only one")];
    assert_eq!(cache.load_or_build_texts(&items, "passages-16", &ByteEncoder).unwrap(), (direct, CacheStatus::Hit));
}
