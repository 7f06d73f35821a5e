//! The fuzz body (`effllm_gguf::fuzz_parse`) over the committed seeds of the `gguf_parse` fuzz target, and the
//! generator of those seeds (`cargo test -p effllm-gguf --test fuzz_seeds -- --ignored write_fuzz_seeds`).

mod common;

use std::path::{Path, PathBuf};

use common::{B, rich_writer};
use effllm_gguf::{GgmlType, ValueType, fuzz_parse};

fn seed_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus-seeds/gguf_parse")
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)).unwrap()
}

fn one_tensor(dims: &[u64], ty: u32, offset: u64, data: usize) -> Vec<u8> {
    let mut b = B::header(3, 1, 0);
    b.tinfo("t", dims, ty, offset).pad(32).zeros(data);
    b.bytes()
}

fn nested(levels: usize) -> Vec<u8> {
    let mut b = B::header(3, 0, 1);
    b.key("deep", ValueType::Array);
    for _ in 0..levels - 1 {
        b.u32(ValueType::Array.id()).u64(1);
    }
    b.u32(ValueType::U8.id()).u64(1).u8(42).pad(32);
    b.bytes()
}

/// The seeds: valid files from gguf-py and from our writer (v1, v2, v3), and one hand-made file per hostile case.
fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut v1 = rich_writer();
    v1.set_version(1);
    let mut v2 = rich_writer();
    v2.set_version(2).set_alignment(8);
    let with = |f: &dyn Fn(&mut B)| {
        let mut b = B::header(3, 0, 1);
        f(&mut b);
        b.pad(32);
        b.bytes()
    };
    let mut big_endian = B::header(3, 0, 0).bytes();
    big_endian[4..8].copy_from_slice(&3u32.to_be_bytes());
    vec![
        ("pygguf_metadata_all_types.gguf", fixture("metadata_all_types.gguf")),
        ("pygguf_tensors_align32.gguf", fixture("tensors_align32.gguf")),
        ("pygguf_counts_u32.gguf", fixture("counts_u32.gguf")),
        ("pygguf_no_tensors.gguf", fixture("no_tensors.gguf")),
        ("writer_rich_v3.gguf", rich_writer().to_bytes().unwrap()),
        ("writer_rich_v1.gguf", v1.to_bytes().unwrap()),
        ("writer_rich_v2_align8.gguf", v2.to_bytes().unwrap()),
        ("minimal_f32.gguf", one_tensor(&[8], 0, 0, 32)),
        ("empty", Vec::new()),
        ("header_only_truncated", B::header(3, 0, 0).bytes()[..12].to_vec()),
        ("bad_magic", b"GGMLxxxxxxxxxxxxxxxxxxxx".to_vec()),
        ("version_4", B::header(4, 0, 0).bytes()),
        ("big_endian_v3", big_endian),
        (
            "string_too_long",
            with(&|b| {
                b.u64((1 << 30) + 1).zeros(16);
            }),
        ),
        (
            "array_too_long",
            with(&|b| {
                b.key("a", ValueType::Array).u32(0).u64((1 << 30) + 1).zeros(16);
            }),
        ),
        (
            "array_count_exceeds_file",
            with(&|b| {
                b.key("a", ValueType::Array).u32(4).u64(1000).zeros(16);
            }),
        ),
        ("nesting_64", nested(64)),
        ("nesting_65", nested(65)),
        ("kv_count_huge", {
            let mut b = B::header(3, 0, u64::MAX);
            b.zeros(32);
            b.bytes()
        }),
        ("tensor_count_huge", {
            let mut b = B::header(3, 1 << 40, 0);
            b.zeros(32);
            b.bytes()
        }),
        ("n_dims_5", one_tensor(&[1, 1, 1, 1, 1], 0, 0, 32)),
        ("n_dims_0", one_tensor(&[], 0, 0, 32)),
        ("unknown_ggml_type", one_tensor(&[8], 42, 0, 32)),
        ("misaligned_offset", one_tensor(&[8], 0, 8, 64)),
        ("tensor_beyond_eof", one_tensor(&[8], 0, 0, 31)),
        ("ne0_not_block_multiple", one_tensor(&[33], GgmlType::Q4_0.id(), 0, 64)),
        ("dim_product_overflow", one_tensor(&[1 << 32, 1 << 32], 0, 0, 32)),
        ("offset_plus_size_overflow", one_tensor(&[8], 0, u64::MAX - 31, 32)),
        (
            "alignment_12",
            with(&|b| {
                b.kv_u32("general.alignment", 12);
            }),
        ),
        ("duplicate_key", {
            let mut b = B::header(3, 0, 2);
            b.kv_u32("k", 1).kv_u32("k", 2).pad(32);
            b.bytes()
        }),
        ("duplicate_tensor", {
            let mut b = B::header(3, 2, 0);
            b.tinfo("w", &[8], 0, 0).tinfo("w", &[8], 0, 32).pad(32).zeros(64);
            b.bytes()
        }),
        (
            "bool_2",
            with(&|b| {
                b.key("flag", ValueType::Bool).u8(2);
            }),
        ),
        (
            "unknown_value_type",
            with(&|b| {
                b.str("k").u32(13).zeros(8);
            }),
        ),
        (
            "invalid_utf8_trailing_nul",
            with(&|b| {
                b.key("s", ValueType::String).u64(4).raw(&[b'a', 0xff, 0, 0]);
            }),
        ),
    ]
}

#[test]
fn fuzz_seed_corpus() {
    let dir = seed_dir();
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        fuzz_parse(&std::fs::read(&path).unwrap());
        n += 1;
    }
    assert!(n >= seeds().len(), "{n} seeds in {}", dir.display());
}

#[test]
fn committed_seeds_are_current() {
    // The committed seeds are exactly what `write_fuzz_seeds` generates.
    for (name, bytes) in seeds() {
        let path = seed_dir().join(name);
        let committed = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(committed == bytes, "{name} is stale: run `cargo test -p effllm-gguf --test fuzz_seeds -- --ignored`");
    }
}

#[test]
#[ignore = "writes fuzz/corpus-seeds/gguf_parse/"]
fn write_fuzz_seeds() {
    let dir = seed_dir();
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in seeds() {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}
