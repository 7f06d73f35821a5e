//! Golden test against files written by PyPI `gguf` 0.19.0 (`scripts/fixtures/gguf_synthetic.py`): metadata,
//! tensor infos, raw tensor bytes and F32/F16/BF16 values must match the script's `expected.json`.

use std::path::{Path, PathBuf};

use effllm_gguf::{GgmlType, GgufFile, GgufWriter, ReadOptions, TensorView, Value, ValueType};
use serde_json::Value as Json;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn expected() -> Json {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("expected.json")).unwrap()).unwrap()
}

fn value_type(name: &str) -> ValueType {
    ValueType::ALL.into_iter().find(|t| t.name() == name).unwrap_or_else(|| panic!("unknown type {name}"))
}

/// Asserts that `v` is the described metadata value `{"type": name, "value": bare}`, bit for bit.
fn check_value(key: &str, v: &Value, d: &Json) {
    assert_eq!(v.value_type(), value_type(d["type"].as_str().unwrap()), "`{key}`");
    check_bare(key, v, &d["value"]);
}

/// `bare`: integers and bools as themselves, floats as bit patterns, strings, arrays as `[elem_type, ...]`.
fn check_bare(key: &str, v: &Value, d: &Json) {
    let ok = match v {
        Value::U8(x) => d.as_u64() == Some(u64::from(*x)),
        Value::U16(x) => d.as_u64() == Some(u64::from(*x)),
        Value::U32(x) => d.as_u64() == Some(u64::from(*x)),
        Value::U64(x) => d.as_u64() == Some(*x),
        Value::I8(x) => d.as_i64() == Some(i64::from(*x)),
        Value::I16(x) => d.as_i64() == Some(i64::from(*x)),
        Value::I32(x) => d.as_i64() == Some(i64::from(*x)),
        Value::I64(x) => d.as_i64() == Some(*x),
        Value::F32(x) => d.as_u64() == Some(u64::from(x.to_bits())),
        Value::F64(x) => d.as_u64() == Some(x.to_bits()),
        Value::Bool(x) => d.as_bool() == Some(*x),
        Value::String(s) => d.as_str() == Some(s.as_str()),
        Value::Array(a) => {
            let (elem_type, items) = d.as_array().unwrap().split_first().unwrap();
            assert_eq!(a.elem_type, value_type(elem_type.as_str().unwrap()), "`{key}` element type");
            assert_eq!(a.values.len(), items.len(), "`{key}` length");
            for (v, d) in a.values.iter().zip(items) {
                assert_eq!(v.value_type(), a.elem_type, "`{key}`");
                check_bare(key, v, d);
            }
            true
        }
    };
    assert!(ok, "`{key}`: read {v:?}, expected {d}");
}

fn f32_values(t: &TensorView<'_>) -> Vec<u32> {
    match t.ty {
        GgmlType::F32 => t.bytes.chunks_exact(4).map(|b| u32::from_le_bytes(b.try_into().unwrap())).collect(),
        GgmlType::F16 => t
            .bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes(b.try_into().unwrap()).to_f32().to_bits())
            .collect(),
        GgmlType::BF16 => t
            .bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes(b.try_into().unwrap()).to_f32().to_bits())
            .collect(),
        other => panic!("no f32 values for {other}"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn gguf_py_files_match_their_description() {
    let doc = expected();
    assert_eq!(doc["gguf"], "0.19.0");
    let files = doc["files"].as_array().unwrap();
    assert_eq!(files.len(), 6);
    for d in files {
        let name = d["file"].as_str().unwrap();
        let path = fixtures().join(name);
        for opts in [ReadOptions::default(), ReadOptions::strict()] {
            let f = GgufFile::open(&path, &opts).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(u64::from(f.version()), d["version"].as_u64().unwrap(), "{name}");
            assert_eq!(f.alignment(), d["alignment"].as_u64().unwrap(), "{name}");
            assert_eq!(f.data_start() as u64, d["data_start"].as_u64().unwrap(), "{name}");
            assert_eq!(f.file_len() as u64, d["file_size"].as_u64().unwrap(), "{name}");

            let meta = d["metadata"].as_array().unwrap();
            assert_eq!(f.metadata().len(), meta.len(), "{name}");
            for ((key, v), m) in f.metadata().iter().zip(meta) {
                assert_eq!(key, m["key"].as_str().unwrap(), "{name}: key order");
                check_value(key, v, &m["value"]);
            }

            let tensors = d["tensors"].as_array().unwrap();
            assert_eq!(f.tensor_count(), tensors.len(), "{name}");
            for (t, e) in f.tensors().zip(tensors) {
                let info = f.tensor_info(t.name).unwrap();
                assert_eq!(t.name, e["name"].as_str().unwrap());
                assert_eq!(t.ty.name(), e["type"].as_str().unwrap());
                assert_eq!(u64::from(t.ty.id()), e["type_id"].as_u64().unwrap());
                let dims: Vec<u64> = e["dims_gguf"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
                assert_eq!(t.dims_gguf, dims.as_slice(), "{}", t.name);
                assert_eq!(info.offset(), e["offset"].as_u64().unwrap(), "{}", t.name);
                assert_eq!(t.nbytes() as u64, e["nbytes"].as_u64().unwrap(), "{}", t.name);
                assert_eq!(hex(t.bytes), e["hex"].as_str().unwrap(), "{}", t.name);
                if let Some(bits) = e["f32_bits"].as_array() {
                    let want: Vec<u32> = bits.iter().map(|b| b.as_u64().unwrap() as u32).collect();
                    assert_eq!(f32_values(&t), want, "{}", t.name);
                }
            }

            // Our writer reproduces gguf-py's file byte for byte (gguf-py pads the tail).
            let mut w = GgufWriter::from_file(&f);
            w.set_pad_tail(true);
            assert_eq!(w.to_bytes().unwrap(), std::fs::read(&path).unwrap(), "{name}: rewrite differs");
        }
    }
}

#[test]
fn every_type_and_odd_shape_is_present() {
    let f = GgufFile::open(fixtures().join("tensors_align64.gguf"), &ReadOptions::strict()).unwrap();
    assert_eq!(f.alignment(), 64);
    assert_eq!(f.get_u64("general.alignment"), Some(64));
    assert_eq!(f.data_start() % 64, 0);
    assert!(f.tensor_infos().iter().all(|t| t.offset() % 64 == 0));
    let f32 = f.tensor("f32.weight").unwrap();
    assert_eq!((f32.dims_gguf, f32.shape()), (&[64u64, 3][..], vec![3, 64]));
    assert_eq!(f.tensor("f16.weight").unwrap().dims_gguf, &[32, 1, 2]);
    assert_eq!(f.tensor("i32.t4d").unwrap().shape(), vec![2, 3, 4, 5]);
    let types: Vec<GgmlType> = f.tensors().map(|t| t.ty).collect();
    for ty in [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::F64,
        GgmlType::I8,
        GgmlType::I16,
        GgmlType::I32,
        GgmlType::I64,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q8_K,
        GgmlType::IQ4_NL,
        GgmlType::MXFP4,
    ] {
        assert!(types.contains(&ty), "{ty} missing");
    }
    // The same tensors in the 32-aligned file have the same bytes.
    let g = GgufFile::open(fixtures().join("tensors_align32.gguf"), &ReadOptions::strict()).unwrap();
    assert_eq!(g.alignment(), 32);
    for (a, b) in f.tensors().zip(g.tensors()) {
        assert_eq!((a.name, a.ty, a.dims_gguf, a.bytes), (b.name, b.ty, b.dims_gguf, b.bytes));
    }
}

#[test]
fn u32_and_u64_typed_counts_read_the_same() {
    let a = GgufFile::open(fixtures().join("counts_u32.gguf"), &ReadOptions::default()).unwrap();
    let b = GgufFile::open(fixtures().join("counts_u64.gguf"), &ReadOptions::default()).unwrap();
    assert_eq!(a.get("llama.block_count"), Some(&Value::U32(30)));
    assert_eq!(b.get("llama.block_count"), Some(&Value::U64(30)));
    let mut n = 0;
    for (key, v) in a.metadata() {
        if v.value_type() == ValueType::U32 {
            assert_eq!(a.get_u64(key), b.get_u64(key), "{key}");
            assert!(a.get_u64(key).is_some());
            n += 1;
        }
    }
    assert_eq!(n, 12);
    assert_eq!(a.get_u64("llama.vocab_size"), Some(49152));
    assert_eq!(a.get_f64("llama.rope.freq_base"), Some(100000.0));

    let m = GgufFile::open(fixtures().join("metadata_all_types.gguf"), &ReadOptions::default()).unwrap();
    for k in ["u8", "u16", "u32", "u64", "i32", "i64"] {
        assert_eq!(m.get_u64(&format!("test.count_{k}")), Some(30), "{k}");
    }
    assert_eq!(m.get_u64("test.count_negative"), None);
    assert_eq!(m.get_i64("test.count_negative"), Some(-1));
    assert_eq!(m.get_str("test.string_inner_nul"), Some("a\0b"));
    assert_eq!(m.get_str("test.string_empty"), Some(""));
    assert_eq!(m.get("nest.depth64").unwrap().array_depth(), 64);
    assert_eq!(m.get_array("arr.empty_array").map(|a| (a.elem_type, a.len())), Some((ValueType::Array, 0)));
}

#[test]
fn metadata_only_file() {
    let f = GgufFile::open(fixtures().join("no_tensors.gguf"), &ReadOptions::strict()).unwrap();
    assert_eq!(f.tensor_count(), 0);
    assert_eq!(f.data_start(), f.file_len());
    assert_eq!(f.get_str_array("tokenizer.ggml.tokens"), Some(vec!["a", "b", "ab"]));
}

#[test]
fn prefixes_of_gguf_py_files_are_rejected() {
    // Invariant 16 for gguf-py's files: every prefix that cuts into the header, the metadata, the tensor infos or
    // any tensor's bytes is rejected. gguf-py also zero-pads after the last tensor; cutting only into that tail
    // padding leaves a file the GGUF spec still calls valid (it requires padding between tensors only), which
    // the reader accepts, with identical contents.
    for name in ["metadata_all_types.gguf", "tensors_align32.gguf", "tensors_align64.gguf", "no_tensors.gguf"] {
        let bytes = std::fs::read(fixtures().join(name)).unwrap();
        let full = GgufFile::parse(&bytes, &ReadOptions::strict()).unwrap();
        let end = full.tensor_infos().iter().map(|t| t.range().end).max().unwrap_or(full.data_start());
        for n in 0..bytes.len() {
            let r = GgufFile::parse(&bytes[..n], &ReadOptions::default());
            if n < end {
                assert!(r.is_err(), "{name}: prefix {n} accepted");
            } else {
                assert_eq!(r.unwrap().tensor_infos(), full.tensor_infos(), "{name}: prefix {n}");
            }
        }
    }
}
