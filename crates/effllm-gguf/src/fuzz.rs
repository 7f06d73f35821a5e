//! The body of the `gguf_parse` fuzz target, shared with the test suite.

use crate::{GgufFile, GgufWriter, ReadOptions};

/// Fuzz body: parses `data` leniently and strictly; must never panic. When a parse succeeds it asserts the
/// reader's invariants (aligned data start and offsets, tensor ranges inside the input, `nbytes` formula,
/// `ne0 % B == 0`, `shape == reversed dims`, lookups consistent with iteration), then rewrites the file with
/// [`GgufWriter::from_file`] and asserts that the rewrite parses to the same metadata (bitwise) and tensors.
///
/// An assertion failure here is a reader bug; the `cargo fuzz` target `gguf_parse` and the test suite (over
/// `fuzz/corpus-seeds/gguf_parse/`) call it.
#[doc(hidden)]
pub fn fuzz_parse(data: &[u8]) {
    for opts in [ReadOptions::default(), ReadOptions::strict()] {
        let Ok(file) = GgufFile::parse(data, &opts) else { continue };
        check_invariants(&file, data.len());
        let rewritten = GgufWriter::from_file(&file).to_bytes().expect("a parsed file can be rewritten");
        let again = GgufFile::parse(&rewritten, &opts).expect("a rewritten file parses");
        check_invariants(&again, rewritten.len());
        assert_same(&file, &again);
    }
}

fn check_invariants(file: &GgufFile, len: usize) {
    let a = file.alignment();
    assert!(a > 0 && a.is_multiple_of(8), "alignment {a}");
    assert_eq!(file.data_start() as u64 % a, 0, "data_start {} not aligned to {a}", file.data_start());
    assert!(file.data_start() <= len);
    assert_eq!(file.file_len(), len);
    for (key, value) in file.metadata() {
        assert!(file.get(key).is_some_and(|v| v.bitwise_eq(value)), "lookup of `{key}`");
    }
    assert_eq!(file.tensors().len(), file.tensor_count());
    for (i, t) in file.tensors().enumerate() {
        let info = &file.tensor_infos()[i];
        assert_eq!(info.offset() % a, 0, "offset of `{}`", t.name);
        let (block, size) = t.ty.block_layout();
        assert!(!t.dims_gguf.is_empty() && t.dims_gguf.len() <= 4);
        assert_eq!(t.dims_gguf[0] % block, 0);
        let nbytes = t.dims_gguf[1..].iter().fold(t.dims_gguf[0] / block * size, |acc, &d| acc * d);
        assert_eq!(t.nbytes() as u64, nbytes, "nbytes of `{}`", t.name);
        let range = info.range();
        assert!(range.end <= len && range.start >= file.data_start());
        assert_eq!(range.start - file.data_start(), info.offset() as usize);
        let rev: Vec<usize> = t.dims_gguf.iter().rev().map(|&d| d as usize).collect();
        assert_eq!(t.shape(), rev);
        assert_eq!(file.tensor(t.name).map(|v| v.bytes.as_ptr()), Some(t.bytes.as_ptr()));
        assert_eq!(file.tensor_bytes(t.name).as_deref(), Some(t.bytes));
    }
}

fn assert_same(a: &GgufFile, b: &GgufFile) {
    assert_eq!(a.version(), b.version());
    assert_eq!(a.alignment(), b.alignment());
    assert_eq!(a.metadata().len(), b.metadata().len());
    for ((ka, va), (kb, vb)) in a.metadata().iter().zip(b.metadata().iter()) {
        assert_eq!(ka, kb);
        assert!(va.bitwise_eq(vb), "value of `{ka}` changed in the rewrite");
    }
    assert_eq!(a.tensor_count(), b.tensor_count());
    for (x, y) in a.tensors().zip(b.tensors()) {
        assert_eq!((x.name, x.ty, x.dims_gguf, x.bytes), (y.name, y.ty, y.dims_gguf, y.bytes));
    }
}
