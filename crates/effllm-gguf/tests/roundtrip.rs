//! Writer → reader round trips (invariant 14), prefixes (16), mutated files (15), the structural invariants
//! (18, 19, 20), shared zero-copy access, and writer validation.

mod common;

use std::sync::Arc;

use common::{B, rich_writer, same};
use effllm_gguf::{
    GgmlType, GgufBytes, GgufError, GgufFile, GgufWriter, ReadOptions, Value, ValueArray, ValueType, fuzz_parse,
};
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------------------------------
// Strategies

fn scalar_of(ty: ValueType) -> BoxedStrategy<Value> {
    match ty {
        ValueType::U8 => any::<u8>().prop_map(Value::U8).boxed(),
        ValueType::I8 => any::<i8>().prop_map(Value::I8).boxed(),
        ValueType::U16 => any::<u16>().prop_map(Value::U16).boxed(),
        ValueType::I16 => any::<i16>().prop_map(Value::I16).boxed(),
        ValueType::U32 => any::<u32>().prop_map(Value::U32).boxed(),
        ValueType::I32 => any::<i32>().prop_map(Value::I32).boxed(),
        // Any bit pattern, NaN payloads included.
        ValueType::F32 => any::<u32>().prop_map(|b| Value::F32(f32::from_bits(b))).boxed(),
        ValueType::Bool => any::<bool>().prop_map(Value::Bool).boxed(),
        // Any string without a trailing NUL (lenient mode strips those; strict keeps them, tested separately).
        ValueType::String => prop_oneof![Just(String::new()), "\\PC{0,12}", any::<String>()]
            .prop_map(|s| Value::String(s.trim_end_matches('\0').to_owned()))
            .boxed(),
        ValueType::U64 => any::<u64>().prop_map(Value::U64).boxed(),
        ValueType::I64 => any::<i64>().prop_map(Value::I64).boxed(),
        ValueType::F64 => any::<u64>().prop_map(|b| Value::F64(f64::from_bits(b))).boxed(),
        ValueType::Array => array(2).boxed(),
    }
}

fn non_array_type() -> impl Strategy<Value = ValueType> {
    prop::sample::select(ValueType::ALL.iter().copied().filter(|&t| t != ValueType::Array).collect::<Vec<_>>())
}

/// An array (possibly empty) of any element type; nested up to `depth` more levels.
fn array(depth: u32) -> BoxedStrategy<Value> {
    let flat = non_array_type()
        .prop_flat_map(|t| prop::collection::vec(scalar_of(t), 0..5).prop_map(move |v| ValueArray::new(t, v)));
    if depth == 0 {
        return flat.prop_map(Value::Array).boxed();
    }
    let nested = prop::collection::vec(array(depth - 1), 0..3).prop_map(|v| ValueArray::new(ValueType::Array, v));
    prop_oneof![3 => flat, 1 => nested].prop_map(Value::Array).boxed()
}

fn any_value() -> impl Strategy<Value = Value> {
    prop::sample::select(ValueType::ALL.to_vec()).prop_flat_map(scalar_of)
}

#[derive(Clone, Debug)]
struct TensorSpec {
    name: String,
    ty: GgmlType,
    dims: Vec<u64>,
    data: Vec<u8>,
}

fn tensor_spec(i: usize) -> impl Strategy<Value = TensorSpec> {
    (prop::sample::select(GgmlType::ALL.to_vec()), 0u64..3, prop::collection::vec(0u64..4, 0..4), any::<u8>()).prop_map(
        move |(ty, blocks, rest, fill)| {
            let mut dims = vec![blocks * ty.block_size()];
            dims.extend(rest);
            let n = ty.nbytes(&dims).unwrap() as usize;
            let data = (0..n).map(|k| fill.wrapping_add(k as u8)).collect();
            TensorSpec { name: format!("t{i}.weight"), ty, dims, data }
        },
    )
}

#[derive(Clone, Debug)]
struct FileSpec {
    version: u32,
    alignment: Option<u64>,
    kvs: Vec<(String, Value)>,
    tensors: Vec<TensorSpec>,
}

fn file_spec() -> impl Strategy<Value = FileSpec> {
    let kvs = prop::collection::vec(("[a-z_.]{0,10}", any_value()), 0..8).prop_map(|kvs| {
        let mut seen = std::collections::HashSet::new();
        kvs.into_iter().filter(|(k, _)| k != "general.alignment" && seen.insert(k.clone())).collect::<Vec<_>>()
    });
    let tensors = (0usize..5).prop_flat_map(|n| (0..n).map(tensor_spec).collect::<Vec<_>>());
    let alignment = prop_oneof![Just(None), prop::sample::select(vec![8u64, 16, 32, 64, 128]).prop_map(Some)];
    (1u32..=3, alignment, kvs, tensors).prop_map(|(version, alignment, kvs, tensors)| FileSpec {
        version,
        alignment,
        kvs,
        tensors,
    })
}

impl FileSpec {
    fn writer(&self) -> GgufWriter<'_> {
        let mut w = GgufWriter::new();
        w.set_version(self.version);
        for (k, v) in &self.kvs {
            w.add(k.clone(), v.clone());
        }
        if let Some(a) = self.alignment {
            w.set_alignment(a);
        }
        for t in &self.tensors {
            w.add_tensor(t.name.clone(), t.ty, &t.dims, t.data.as_slice());
        }
        w
    }
}

fn check_matches_spec(f: &GgufFile, spec: &FileSpec) {
    assert_eq!(f.version(), spec.version);
    let a = spec.alignment.unwrap_or(32);
    assert_eq!(f.alignment(), a);
    // Invariant 18: aligned data start and offsets, nbytes formula, ranges in the file.
    assert_eq!(f.data_start() as u64 % a, 0);
    let expected_len = spec.kvs.len() + usize::from(spec.alignment.is_some());
    assert_eq!(f.metadata().len(), expected_len);
    for ((k, v), (rk, rv)) in spec.kvs.iter().zip(f.metadata().iter()) {
        assert_eq!(k, rk);
        assert!(same(v, rv), "`{k}`: wrote {v:?}, read {rv:?}");
        assert!(same(f.get(k).unwrap(), v));
    }
    assert_eq!(f.tensor_count(), spec.tensors.len());
    for (t, info) in spec.tensors.iter().zip(f.tensor_infos()) {
        assert_eq!((info.name(), info.ty(), info.dims_gguf()), (t.name.as_str(), t.ty, t.dims.as_slice()));
        assert_eq!(info.offset() % a, 0);
        let (bs, ts) = t.ty.block_layout();
        assert_eq!(t.dims[0] % bs, 0);
        let nbytes = t.dims[1..].iter().product::<u64>() * (t.dims[0] / bs) * ts;
        assert_eq!(info.nbytes() as u64, nbytes);
        assert!(info.range().end <= f.file_len());
        // Invariant 19.
        let view = f.tensor(&t.name).unwrap();
        assert_eq!(view.shape(), t.dims.iter().rev().map(|&d| d as usize).collect::<Vec<_>>());
        assert_eq!(info.shape(), view.shape());
        assert_eq!(view.bytes, t.data.as_slice());
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Round trip (invariant 14)

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn writer_reader_round_trip(spec in file_spec()) {
        let bytes = spec.writer().to_bytes().unwrap();
        for opts in [ReadOptions::default(), ReadOptions::strict()] {
            let f = GgufFile::parse(&bytes, &opts).unwrap();
            check_matches_spec(&f, &spec);
            // Rewriting the parsed file reproduces it byte for byte.
            prop_assert_eq!(&GgufWriter::from_file(&f).to_bytes().unwrap(), &bytes);
        }
    }

    #[test]
    fn every_strict_prefix_is_rejected(spec in file_spec()) {
        // Invariant 16, both modes.
        let bytes = spec.writer().to_bytes().unwrap();
        for n in 0..bytes.len() {
            prop_assert!(GgufFile::parse(&bytes[..n], &ReadOptions::default()).is_err(), "prefix {} of {}", n, bytes.len());
            prop_assert!(GgufFile::parse(&bytes[..n], &ReadOptions::strict()).is_err());
        }
    }

    #[test]
    fn mutated_files_never_panic(
        spec in file_spec(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        splats in prop::collection::vec((any::<prop::sample::Index>(), prop::sample::select(vec![
            0u64, 1, 4, 5, 9, 13, 64, 65, u32::MAX as u64, (1 << 30) + 1, 1 << 40, i64::MAX as u64, u64::MAX - 31, u64::MAX,
        ])), 0..3),
        cut in any::<Option<prop::sample::Index>>(),
    ) {
        // Invariant 15: any mutation gives Ok or Err; when Ok, the fuzz body checks every invariant.
        let mut bytes = spec.writer().to_bytes().unwrap();
        for (i, b) in flips {
            let i = i.index(bytes.len());
            bytes[i] = b;
        }
        for (i, v) in splats {
            let i = i.index(bytes.len().saturating_sub(8).max(1));
            let end = (i + 8).min(bytes.len());
            bytes[i..end].copy_from_slice(&v.to_le_bytes()[..end - i]);
        }
        if let Some(c) = cut {
            bytes.truncate(c.index(bytes.len() + 1));
        }
        fuzz_parse(&bytes);
    }

    #[test]
    fn arbitrary_bytes_never_panic(mut data in prop::collection::vec(any::<u8>(), 0..256), header in any::<bool>()) {
        if header && data.len() >= 8 {
            data[..4].copy_from_slice(b"GGUF");
            data[4..8].copy_from_slice(&3u32.to_le_bytes());
        }
        fuzz_parse(&data);
    }

    #[test]
    fn integer_keys_widen_to_u64(n in any::<u64>()) {
        // Invariant 20: every integer type holding a non-negative value is readable through get_u64.
        let mut w = GgufWriter::new();
        let vals: Vec<(&str, Value, bool)> = vec![
            ("u8", Value::U8(n as u8), true),
            ("u16", Value::U16(n as u16), true),
            ("u32", Value::U32(n as u32), true),
            ("u64", Value::U64(n), true),
            ("i8", Value::I8(n as i8), (n as i8) >= 0),
            ("i16", Value::I16(n as i16), (n as i16) >= 0),
            ("i32", Value::I32(n as i32), (n as i32) >= 0),
            ("i64", Value::I64(n as i64), (n as i64) >= 0),
        ];
        for (k, v, _) in &vals {
            w.add(*k, v.clone());
        }
        let f = GgufFile::parse(&w.to_bytes().unwrap(), &ReadOptions::default()).unwrap();
        let expect = |k: &str| match k {
            "u8" => u64::from(n as u8), "u16" => u64::from(n as u16), "u32" => u64::from(n as u32),
            "u64" => n, "i8" => (n as i8) as u64, "i16" => (n as i16) as u64, "i32" => (n as i32) as u64,
            _ => (n as i64) as u64,
        };
        for (k, _, non_negative) in &vals {
            prop_assert_eq!(f.get_u64(k), non_negative.then(|| expect(k)), "{}", k);
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Deterministic cases

#[test]
fn round_trip_of_every_type_in_strict_mode_keeps_trailing_nuls() {
    let mut w = rich_writer();
    w.add("nul", "ends in NUL\0\0").add("nul_array", Value::string_array(["x\0", "\0"]));
    let bytes = w.to_bytes().unwrap();
    let f = GgufFile::parse(&bytes, &ReadOptions::strict()).unwrap();
    assert_eq!(f.get_str("nul"), Some("ends in NUL\0\0"));
    assert_eq!(f.get_str_array("nul_array"), Some(vec!["x\0", "\0"]));
    assert_eq!(GgufWriter::from_file(&f).to_bytes().unwrap(), bytes);
    let l = GgufFile::parse(&bytes, &ReadOptions::default()).unwrap();
    assert_eq!(l.get_str("nul"), Some("ends in NUL"));
    assert_eq!(l.get_str_array("nul_array"), Some(vec!["x", ""]));
}

#[test]
fn round_trip_of_arrays_nested_64_deep_and_empty() {
    let mut deepest = Value::array(ValueType::F64, [f64::NAN, -0.0]);
    for _ in 1..64 {
        deepest = Value::array(ValueType::Array, [deepest]);
    }
    let mut w = GgufWriter::new();
    w.add("deep", deepest.clone())
        .add("empty_of_arrays", Value::array(ValueType::Array, Vec::<Value>::new()))
        .add("empty_strings", Value::string_array(Vec::<String>::new()))
        .add("empty_bools", Value::array(ValueType::Bool, Vec::<bool>::new()))
        .add("", "empty key");
    let bytes = w.to_bytes().unwrap();
    let f = GgufFile::parse(&bytes, &ReadOptions::strict()).unwrap();
    assert_eq!(f.get("deep").unwrap().array_depth(), 64);
    assert!(same(f.get("deep").unwrap(), &deepest));
    assert_eq!(f.get_array("empty_of_arrays").unwrap().elem_type, ValueType::Array);
    assert_eq!(f.get_array("empty_strings").unwrap().elem_type, ValueType::String);
    assert_eq!(f.get_str_array("empty_strings"), Some(vec![]));
    assert_eq!(f.get_str(""), Some("empty key"));
    // One more level: the writer writes it, the reader rejects it.
    let mut w = GgufWriter::new();
    w.add("deeper", Value::array(ValueType::Array, [deepest]));
    let e = GgufFile::parse(&w.to_bytes().unwrap(), &ReadOptions::default()).unwrap_err();
    assert!(matches!(e, GgufError::NestingTooDeep { ref key, max: 64 } if key == "deeper"), "{e}");
}

#[test]
fn every_strict_prefix_of_rich_files_is_rejected() {
    for version in [1, 2, 3] {
        for alignment in [8u64, 32, 256] {
            let mut w = rich_writer();
            w.set_version(version).set_alignment(alignment);
            let bytes = w.to_bytes().unwrap();
            GgufFile::parse(&bytes, &ReadOptions::strict()).unwrap();
            for n in 0..bytes.len() {
                assert!(GgufFile::parse(&bytes[..n], &ReadOptions::default()).is_err(), "v{version} a{alignment} {n}");
            }
        }
    }
    // A file without tensors: the header padding is required too.
    let mut w = GgufWriter::new();
    w.add("general.architecture", "x");
    let bytes = w.to_bytes().unwrap();
    assert_eq!(bytes.len() % 32, 0);
    for n in 0..bytes.len() {
        assert!(GgufFile::parse(&bytes[..n], &ReadOptions::default()).is_err(), "{n}");
    }
}

#[test]
fn tail_padding_is_optional_for_readers() {
    let mut w = rich_writer();
    let plain = w.to_bytes().unwrap();
    let padded = w.set_pad_tail(true).to_bytes().unwrap();
    assert_eq!(padded.len() % 32, 0);
    assert!(padded.len() > plain.len() && padded.starts_with(&plain));
    assert!(padded[plain.len()..].iter().all(|&b| b == 0));
    let a = GgufFile::parse(&plain, &ReadOptions::strict()).unwrap();
    let b = GgufFile::parse(&padded, &ReadOptions::strict()).unwrap();
    assert_eq!(a.tensor_infos(), b.tensor_infos());
}

#[test]
fn shared_bytes_outlive_the_file() {
    let bytes = rich_writer().to_bytes().unwrap();
    let expected = GgufFile::parse(&bytes, &ReadOptions::default()).unwrap().tensor("a.weight").unwrap().bytes.to_vec();
    let (view, shared) = {
        let f = GgufFile::from_bytes(bytes.clone(), &ReadOptions::default()).unwrap();
        assert!(!f.bytes().is_mmap());
        (f.tensor_bytes("a.weight").unwrap(), f.bytes().clone())
    };
    assert_eq!(&*view, expected.as_slice());
    assert_eq!(view.range().len(), 24);
    assert_eq!(shared.len(), bytes.len());
    // Every owned source works without copying.
    let arc: Arc<[u8]> = bytes.clone().into();
    let f = GgufFile::from_bytes(arc, &ReadOptions::default()).unwrap();
    assert_eq!(f.tensor("a.weight").unwrap().bytes, expected.as_slice());
    let leaked: &'static [u8] = Box::leak(bytes.clone().into_boxed_slice());
    let f = GgufFile::from_bytes(leaked, &ReadOptions::default()).unwrap();
    assert_eq!(
        f.tensor("a.weight").unwrap().bytes.as_ptr(),
        leaked[f.tensor_info("a.weight").unwrap().range()].as_ptr()
    );
    let _: GgufBytes = bytes.into_boxed_slice().into();
    fn send_sync<T: Send + Sync + 'static>(_: &T) {}
    send_sync(&view);
    send_sync(&shared);
}

#[test]
fn open_memory_maps_the_file() {
    let dir = std::env::temp_dir().join(format!("effllm-gguf-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("rich.gguf");
    rich_writer().write_file(&path).unwrap();
    let f = GgufFile::open(&path, &ReadOptions::default()).unwrap();
    assert!(f.bytes().is_mmap());
    assert_eq!(f.tensor_count(), 5);
    let view = f.tensor_bytes("c.weight").unwrap();
    drop(f);
    assert_eq!(&*view, &[0x22; 68][..]);
    // An empty file is a parse error, not an mmap error.
    let empty = dir.join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(GgufFile::open(&empty, &ReadOptions::default()), Err(GgufError::Truncated { .. })));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn tensor_lookup_and_order() {
    let f = GgufFile::parse(&rich_writer().to_bytes().unwrap(), &ReadOptions::default()).unwrap();
    let names: Vec<&str> = f.tensors().map(|t| t.name).collect();
    assert_eq!(names, ["a.weight", "b.weight", "c.weight", "d.empty", "e.bias"]);
    assert!(f.tensor("missing").is_none() && f.tensor_bytes("missing").is_none());
    let e = f.tensor("e.bias").unwrap();
    assert_eq!((e.dims_gguf, e.shape(), e.n_elements()), (&[5u64, 1, 1, 1][..], vec![1, 1, 1, 5], 5));
    assert_eq!(f.tensor("d.empty").unwrap().nbytes(), 0);
    assert_eq!(f.tensor("b.weight").unwrap().ty, GgmlType::Q4_1);
    let keys: Vec<&str> = f.metadata().keys().collect();
    assert_eq!(keys[..3], ["general.architecture", "u8", "i8"]);
    assert_eq!(f.architecture(), Some("llama"));
    assert_eq!(f.get_f64("f32"), Some(1.5));
    assert_eq!(f.get_i64("i64"), Some(i64::MIN));
    assert_eq!(f.get_u64("i64"), None);
    assert_eq!(f.get_u64("string"), None);
    assert_eq!(f.get_bool("bool"), Some(true));
}

#[test]
fn writer_rejects_invalid_input() {
    let reason = |w: &GgufWriter<'_>| w.to_bytes().unwrap_err();
    let mut w = GgufWriter::new();
    w.add("k", 1u8).add("k", 2u8);
    assert!(matches!(reason(&w), GgufError::DuplicateKey { .. }));
    let mut w = GgufWriter::new();
    w.add_tensor("t", GgmlType::F32, &[1], vec![0; 4]).add_tensor("t", GgmlType::F32, &[1], vec![0; 4]);
    assert!(matches!(reason(&w), GgufError::DuplicateTensor { .. }));
    let mut w = GgufWriter::new();
    w.add("mixed", Value::Array(ValueArray::new(ValueType::U8, vec![Value::U8(1), Value::I8(1)])));
    assert!(matches!(reason(&w), GgufError::MixedArray { expected: ValueType::U8, found: ValueType::I8, .. }));
    let mut w = GgufWriter::new();
    w.add_tensor("t", GgmlType::Q4_0, &[32], vec![0; 17]);
    assert!(matches!(reason(&w), GgufError::InvalidWriterInput { ref reason } if reason.contains("needs 18 bytes")));
    let mut w = GgufWriter::new();
    w.add_tensor("t", GgmlType::Q4_0, &[16], vec![0; 9]);
    assert!(matches!(reason(&w), GgufError::NotBlockMultiple { .. }));
    let mut w = GgufWriter::new();
    w.add_tensor("t", GgmlType::F32, &[], vec![]);
    assert!(matches!(reason(&w), GgufError::NoDims { .. }));
    let mut w = GgufWriter::new();
    w.set_alignment(12);
    assert!(matches!(reason(&w), GgufError::InvalidAlignment { .. }));
    let mut w = GgufWriter::new();
    w.set_version(4);
    assert!(matches!(reason(&w), GgufError::InvalidWriterInput { .. }));
    let mut w = GgufWriter::new();
    w.set_version(1).add_tensor("t", GgmlType::I8, &[1 << 32], Vec::new());
    assert!(matches!(reason(&w), GgufError::InvalidWriterInput { .. }));
}

#[test]
fn hand_assembled_and_written_bytes_agree() {
    // The test builder and the writer produce the same bytes for the same file (so the hostile tests' layout is
    // the real layout).
    let mut b = B::header(3, 1, 2);
    b.kv_str("general.architecture", "llama").kv_u32("n", 7).tinfo("t", &[8], 0, 0).pad(32).zeros(32);
    let mut w = GgufWriter::new();
    w.add("general.architecture", "llama").add("n", 7u32).add_tensor("t", GgmlType::F32, &[8], vec![0; 32]);
    assert_eq!(w.to_bytes().unwrap(), b.bytes());
}
