//! One test per hostile input, each built from hand-assembled bytes, each expecting its own error (invariant 17).

mod common;

use common::B;
use effllm_gguf::{GgmlType, GgufError, GgufFile, ReadOptions, Value, ValueType};

fn lenient(bytes: &[u8]) -> Result<GgufFile, GgufError> {
    GgufFile::parse(bytes, &ReadOptions::default())
}

fn strict(bytes: &[u8]) -> Result<GgufFile, GgufError> {
    GgufFile::parse(bytes, &ReadOptions::strict())
}

/// Parses in both modes and returns the lenient error (asserting both fail the same way).
fn err(bytes: &[u8]) -> GgufError {
    let e = lenient(bytes).expect_err("lenient parse must fail");
    let s = strict(bytes).expect_err("strict parse must fail");
    assert_eq!(std::mem::discriminant(&e), std::mem::discriminant(&s), "{e} vs {s}");
    e
}

/// One F32 tensor info `t` of `dims` at `offset`, with the header padded and `data` bytes of tensor data.
fn one_tensor(dims: &[u64], ty: u32, offset: u64, data: usize) -> Vec<u8> {
    let mut b = B::header(3, 1, 0);
    b.tinfo("t", dims, ty, offset).pad(32).zeros(data);
    b.bytes()
}

#[test]
fn minimal_file_is_valid() {
    let f = lenient(&one_tensor(&[8], 0, 0, 32)).unwrap();
    assert_eq!((f.tensor_count(), f.data_start(), f.alignment()), (1, 64, 32));
    assert_eq!(f.tensor("t").unwrap().nbytes(), 32);
}

#[test]
fn rejects_bad_magic() {
    let mut b = B::header(3, 0, 0);
    b.buf[..4].copy_from_slice(b"GGML");
    let e = err(&b.bytes());
    assert!(matches!(e, GgufError::BadMagic { found } if &found == b"GGML"), "{e}");
}

#[test]
fn rejects_unsupported_version() {
    for v in [0u32, 4, 99] {
        let e = err(&B::header(v, 0, 0).bytes());
        assert!(matches!(e, GgufError::UnsupportedVersion { version, .. } if version == v), "{e}");
    }
    // Version 3 written big-endian reads as 0x03000000: say so.
    let e = err(&B::header(3u32.swap_bytes(), 0, 0).bytes());
    assert!(e.to_string().contains("big-endian"), "{e}");
}

#[test]
fn rejects_truncated_header() {
    for n in 0..24 {
        let b = B::header(3, 0, 0).bytes();
        let e = err(&b[..n]);
        assert!(matches!(e, GgufError::Truncated { .. }), "prefix {n}: {e}");
    }
}

#[test]
fn rejects_oversized_string_length() {
    // Key length 2^30 + 1: the cap fires before the (much smaller) remaining-bytes check.
    let mut b = B::header(3, 0, 1);
    b.u64((1 << 30) + 1).zeros(64);
    let e = err(&b.bytes());
    assert!(matches!(e, GgufError::StringTooLong { len, max, .. } if len == (1 << 30) + 1 && max == 1 << 30), "{e}");
    assert!(e.to_string().contains("key of metadata entry 0"), "{e}");

    // A string value, likewise; the error names the key.
    let mut b = B::header(3, 0, 1);
    b.key("general.name", ValueType::String).u64(u64::MAX).zeros(64);
    let e = err(&b.bytes());
    assert!(matches!(e, GgufError::StringTooLong { ref what, .. } if what.contains("general.name")), "{e}");

    // Within the cap but beyond the file: truncated.
    let mut b = B::header(3, 0, 1);
    b.key("general.name", ValueType::String).u64(1000).raw(b"short");
    let e = err(&b.bytes());
    assert!(matches!(e, GgufError::Truncated { needed: 1000, remaining: 5, .. }), "{e}");

    // A custom cap.
    let mut b = B::header(3, 0, 1);
    b.kv_str("k", "0123456789");
    let opts = ReadOptions { max_string_len: 9, ..ReadOptions::default() };
    let e = GgufFile::parse(&b.bytes(), &opts).unwrap_err();
    assert!(matches!(e, GgufError::StringTooLong { len: 10, max: 9, .. }), "{e}");
}

#[test]
fn rejects_oversized_array() {
    let mut b = B::header(3, 0, 1);
    b.key("tokenizer.ggml.tokens", ValueType::Array).u32(ValueType::U8.id()).u64((1 << 30) + 1).zeros(64);
    let e = err(&b.bytes());
    assert!(
        matches!(e, GgufError::ArrayTooLong { ref key, len, max } if key == "tokenizer.ggml.tokens" && len == (1 << 30) + 1 && max == 1 << 30),
        "{e}"
    );
}

#[test]
fn rejects_array_count_larger_than_remaining_bytes() {
    // 1000 u32 elements need 4000 bytes; only 40 remain. Checked before allocating.
    let mut b = B::header(3, 0, 1);
    b.key("scores", ValueType::Array).u32(ValueType::U32.id()).u64(1000).zeros(40);
    let e = err(&b.bytes());
    assert!(
        matches!(e, GgufError::CountExceedsRemaining { count: 1000, min_record_size: 4, remaining: 40, .. }),
        "{e}"
    );
    // Strings count at least their 8-byte length field: 6 empty strings fit 48 bytes, 7 do not.
    let mut b = B::header(3, 0, 1);
    b.key("s", ValueType::Array).u32(ValueType::String.id()).u64(7).zeros(48);
    assert!(matches!(err(&b.bytes()), GgufError::CountExceedsRemaining { min_record_size: 8, .. }));
    let mut b = B::header(3, 0, 1);
    b.key("s", ValueType::Array).u32(ValueType::String.id()).u64(6).zeros(48).pad(32);
    assert_eq!(lenient(&b.bytes()).unwrap().get_str_array("s").unwrap(), vec![""; 6]);
}

#[test]
fn rejects_kv_count_larger_than_remaining_bytes() {
    let mut b = B::header(3, 0, u64::MAX);
    b.zeros(100);
    let e = err(&b.bytes());
    assert!(
        matches!(e, GgufError::CountExceedsRemaining { ref what, count: u64::MAX, min_record_size: 13, .. } if what == "metadata_kv_count"),
        "{e}"
    );
    // 8 KV pairs need at least 104 bytes.
    let mut b = B::header(3, 0, 8);
    b.zeros(103);
    assert!(matches!(err(&b.bytes()), GgufError::CountExceedsRemaining { count: 8, remaining: 103, .. }));
}

#[test]
fn rejects_tensor_count_larger_than_remaining_bytes() {
    let mut b = B::header(3, 1 << 40, 0);
    b.zeros(1000);
    let e = err(&b.bytes());
    assert!(
        matches!(e, GgufError::CountExceedsRemaining { ref what, min_record_size: 24, .. } if what.starts_with("tensor_count")),
        "{e}"
    );
}

#[test]
fn rejects_too_many_dims() {
    let e = err(&one_tensor(&[1, 1, 1, 1, 1], 0, 0, 32));
    assert!(matches!(e, GgufError::TooManyDims { ref tensor, n_dims: 5, max: 4 } if tensor == "t"), "{e}");
    // A huge n_dims is rejected before any dim is read.
    let mut b = B::header(3, 1, 0);
    b.str("t").u32(u32::MAX).zeros(64);
    assert!(matches!(err(&b.bytes()), GgufError::TooManyDims { n_dims: u32::MAX, .. }));
    // Zero dims too.
    assert!(matches!(err(&one_tensor(&[], 0, 0, 32)), GgufError::NoDims { .. }));
}

fn nested_array(levels: usize) -> Vec<u8> {
    // `levels` arrays, each holding one element; the innermost holds one u8.
    let mut b = B::header(3, 0, 1);
    b.key("deep", ValueType::Array);
    for _ in 0..levels - 1 {
        b.u32(ValueType::Array.id()).u64(1);
    }
    b.u32(ValueType::U8.id()).u64(1).u8(42).pad(32);
    b.bytes()
}

#[test]
fn rejects_nesting_deeper_than_64() {
    let f = lenient(&nested_array(64)).unwrap();
    assert_eq!(f.get("deep").unwrap().array_depth(), 64);
    let e = err(&nested_array(65));
    assert!(matches!(e, GgufError::NestingTooDeep { ref key, max: 64 } if key == "deep"), "{e}");
    // The cap is configurable, and clamped so no setting can overflow the stack.
    let opts = ReadOptions { max_depth: 2, ..ReadOptions::default() };
    assert!(matches!(GgufFile::parse(&nested_array(3), &opts), Err(GgufError::NestingTooDeep { max: 2, .. })));
    let opts = ReadOptions { max_depth: u32::MAX, ..ReadOptions::default() };
    let hard = effllm_gguf::HARD_MAX_DEPTH as usize;
    assert_eq!(GgufFile::parse(&nested_array(hard), &opts).unwrap().get("deep").unwrap().array_depth(), hard);
    assert!(matches!(
        GgufFile::parse(&nested_array(hard + 1), &opts),
        Err(GgufError::NestingTooDeep { max: effllm_gguf::HARD_MAX_DEPTH, .. })
    ));
    assert!(matches!(GgufFile::parse(&nested_array(100_000), &opts), Err(GgufError::NestingTooDeep { .. })));
}

#[test]
fn nesting_does_not_depend_on_the_stack() {
    // Arrays are parsed with an explicit stack: the deepest nesting any setting allows parses (and drops) on a
    // small thread stack, even in a debug build.
    let hard = effllm_gguf::HARD_MAX_DEPTH as usize;
    let data = nested_array(hard);
    let ok = std::thread::Builder::new()
        .stack_size(128 * 1024)
        .spawn(move || {
            let opts = ReadOptions { max_depth: u32::MAX, ..ReadOptions::default() };
            GgufFile::parse(&data, &opts).map(|f| f.get("deep").map(Value::array_depth)).ok().flatten()
        })
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(ok, Some(hard));
}

#[test]
fn rejects_tensor_range_beyond_eof() {
    // 8 f32 = 32 bytes declared, 31 present.
    let e = err(&one_tensor(&[8], 0, 0, 31));
    assert!(
        matches!(e, GgufError::TensorOutOfBounds { ref tensor, start: 64, end: 96, file_len: 95 } if tensor == "t"),
        "{e}"
    );
    // A far offset (aligned).
    let e = err(&one_tensor(&[8], 0, 1 << 40, 32));
    assert!(matches!(e, GgufError::TensorOutOfBounds { .. }), "{e}");
    // Header padding missing: the data section would start beyond the end.
    let mut b = B::header(3, 1, 0);
    b.tinfo("t", &[0], 0, 0);
    let e = err(&b.bytes());
    assert!(matches!(e, GgufError::DataStartBeyondEof { data_start: 64, file_len: 57 }), "{e}");
}

#[test]
fn rejects_misaligned_offset() {
    let e = err(&one_tensor(&[8], 0, 8, 64));
    assert!(matches!(e, GgufError::MisalignedOffset { ref tensor, offset: 8, alignment: 32 } if tensor == "t"), "{e}");
    // With general.alignment = 8 the same offset is fine.
    let mut b = B::header(3, 1, 1);
    b.kv_u32("general.alignment", 8).tinfo("t", &[8], 0, 8).pad(8).zeros(40);
    let f = lenient(&b.bytes()).unwrap();
    assert_eq!((f.alignment(), f.tensor_info("t").unwrap().offset()), (8, 8));
}

#[test]
fn rejects_alignment_not_a_multiple_of_8() {
    for a in [0u32, 4, 12, 33] {
        let mut b = B::header(3, 0, 1);
        b.kv_u32("general.alignment", a).pad(32);
        let e = err(&b.bytes());
        assert!(matches!(e, GgufError::InvalidAlignment { ref found } if found.starts_with(&a.to_string())), "{e}");
    }
    // Not an integer, or negative.
    let mut b = B::header(3, 0, 1);
    b.kv_str("general.alignment", "32").pad(32);
    assert!(matches!(err(&b.bytes()), GgufError::InvalidAlignment { .. }));
    let mut b = B::header(3, 0, 1);
    b.key("general.alignment", ValueType::I32).u32((-32i32) as u32).pad(32);
    assert!(matches!(err(&b.bytes()), GgufError::InvalidAlignment { .. }));
    // Any non-negative integer type is accepted (u64 here).
    let mut b = B::header(3, 0, 1);
    b.key("general.alignment", ValueType::U64).u64(64).pad(64);
    assert_eq!(lenient(&b.bytes()).unwrap().alignment(), 64);
}

#[test]
fn rejects_unknown_ggml_type_naming_tensor_and_id() {
    for id in [4u32, 5, 31, 36, 42, 1000, u32::MAX] {
        let mut b = B::header(3, 2, 0);
        b.tinfo("ok.weight", &[8], 0, 0).tinfo("blk.20.attn_q.weight", &[8], id, 32).pad(32).zeros(64);
        let e = err(&b.bytes());
        assert!(
            matches!(e, GgufError::UnknownGgmlType { ref tensor, id: found } if tensor == "blk.20.attn_q.weight" && found == id),
            "{e}"
        );
        let msg = e.to_string();
        assert!(msg.contains("blk.20.attn_q.weight") && msg.contains(&id.to_string()), "{msg}");
    }
}

#[test]
fn rejects_unknown_value_type() {
    let mut b = B::header(3, 0, 1);
    b.str("k").u32(13).zeros(16);
    let e = err(&b.bytes());
    assert!(matches!(e, GgufError::UnknownValueType { ref what, id: 13 } if what.contains("`k`")), "{e}");
    let mut b = B::header(3, 0, 1);
    b.key("arr", ValueType::Array).u32(99).u64(0).zeros(16);
    let e = err(&b.bytes());
    assert!(matches!(e, GgufError::UnknownValueType { ref what, id: 99 } if what.contains("element type")), "{e}");
}

#[test]
fn rejects_duplicate_key() {
    let mut b = B::header(3, 0, 2);
    b.kv_u32("llama.block_count", 30).kv_u32("llama.block_count", 31).pad(32);
    let e = err(&b.bytes());
    assert!(matches!(e, GgufError::DuplicateKey { ref key } if key == "llama.block_count"), "{e}");
}

#[test]
fn rejects_duplicate_tensor() {
    let mut b = B::header(3, 2, 0);
    b.tinfo("w", &[8], 0, 0).tinfo("w", &[8], 0, 32).pad(32).zeros(64);
    let e = err(&b.bytes());
    assert!(matches!(e, GgufError::DuplicateTensor { ref name } if name == "w"), "{e}");
}

#[test]
fn rejects_bool_not_0_or_1_in_strict_mode() {
    let mut b = B::header(3, 0, 1);
    b.key("tokenizer.ggml.add_bos_token", ValueType::Bool).u8(2).pad(32);
    let e = strict(&b.bytes()).unwrap_err();
    assert!(matches!(e, GgufError::InvalidBool { ref what, byte: 2 } if what.contains("add_bos_token")), "{e}");
    // Lenient: any non-zero byte is true.
    assert_eq!(lenient(&b.bytes()).unwrap().get_bool("tokenizer.ggml.add_bos_token"), Some(true));
    // Inside arrays as well.
    let mut b = B::header(3, 0, 1);
    b.key("flags", ValueType::Array).u32(ValueType::Bool.id()).u64(3).raw(&[0, 1, 255]).pad(32);
    assert!(matches!(strict(&b.bytes()), Err(GgufError::InvalidBool { byte: 255, .. })));
    let f = lenient(&b.bytes()).unwrap();
    assert_eq!(f.get_array("flags").unwrap().values, vec![Value::Bool(false), Value::Bool(true), Value::Bool(true)]);
}

#[test]
fn rejects_ne0_not_a_multiple_of_block_size() {
    let e = err(&one_tensor(&[33, 2], GgmlType::Q4_0.id(), 0, 128));
    assert!(
        matches!(e, GgufError::NotBlockMultiple { ref tensor, ty: GgmlType::Q4_0, ne0: 33, block_size: 32 } if tensor == "t"),
        "{e}"
    );
    let e = err(&one_tensor(&[255], GgmlType::Q6_K.id(), 0, 256));
    assert!(matches!(e, GgufError::NotBlockMultiple { block_size: 256, .. }), "{e}");
    // A multiple is fine: Q4_0 [64, 2] is 4 blocks of 18 bytes.
    let f = lenient(&one_tensor(&[64, 2], GgmlType::Q4_0.id(), 0, 72)).unwrap();
    assert_eq!(f.tensor("t").unwrap().nbytes(), 72);
}

#[test]
fn rejects_overflow_in_dim_product() {
    let e = err(&one_tensor(&[1 << 32, 1 << 32], 0, 0, 32));
    assert!(
        matches!(e, GgufError::DimOverflow { ref tensor, ref dims } if tensor == "t" && dims == &[1u64 << 32, 1 << 32]),
        "{e}"
    );
    // Beyond ggml's int64 element count.
    let e = err(&one_tensor(&[1 << 62, 4], GgmlType::I8.id(), 0, 32));
    assert!(matches!(e, GgufError::DimOverflow { .. }), "{e}");
    // Element count fine, byte size overflows u64: 2^61 f64 = 2^64 bytes.
    let e = err(&one_tensor(&[1 << 61], GgmlType::F64.id(), 0, 32));
    assert!(matches!(e, GgufError::SizeOverflow { .. }), "{e}");
    // offset + size overflows.
    let e = err(&one_tensor(&[8], 0, u64::MAX - 31, 32));
    assert!(
        matches!(e, GgufError::SizeOverflow { ref tensor, offset, .. } if tensor == "t" && offset == u64::MAX - 31),
        "{e}"
    );
}

#[test]
fn strict_mode_checks_keys_names_and_utf8() {
    let mut b = B::header(3, 0, 1);
    b.kv_u32("clé", 1).pad(32);
    assert!(matches!(strict(&b.bytes()), Err(GgufError::NonAsciiKey { ref key }) if key == "clé"));
    assert_eq!(lenient(&b.bytes()).unwrap().get_u64("clé"), Some(1));

    let long_key = "k".repeat(65536);
    let mut b = B::header(3, 0, 1);
    b.kv_u32(&long_key, 1).pad(32);
    assert!(matches!(strict(&b.bytes()), Err(GgufError::KeyTooLong { len: 65536, .. })));
    assert!(lenient(&b.bytes()).is_ok());

    let name = "n".repeat(65);
    let mut b = B::header(3, 1, 0);
    b.tinfo(&name, &[8], 0, 0).pad(32).zeros(32);
    assert!(matches!(strict(&b.bytes()), Err(GgufError::TensorNameTooLong { len: 65, .. })));
    assert!(lenient(&b.bytes()).is_ok());

    // Invalid UTF-8 with a trailing NUL: strict rejects, lenient decodes lossily and strips the NULs.
    let mut b = B::header(3, 0, 1);
    b.key("general.name", ValueType::String).u64(5).raw(&[b'a', 0xff, b'b', 0, 0]).pad(32);
    assert!(matches!(strict(&b.bytes()), Err(GgufError::InvalidUtf8 { .. })));
    assert_eq!(lenient(&b.bytes()).unwrap().get_str("general.name"), Some("a\u{fffd}b"));
    // Valid UTF-8 with trailing NULs: strict keeps them.
    let mut b = B::header(3, 0, 1);
    b.key("general.name", ValueType::String).u64(3).raw(b"ab\0").pad(32);
    assert_eq!(strict(&b.bytes()).unwrap().get_str("general.name"), Some("ab\0"));
    assert_eq!(lenient(&b.bytes()).unwrap().get_str("general.name"), Some("ab"));
}

#[test]
fn reads_version_1_with_u32_counts() {
    let mut b = B::header(1, 1, 2);
    b.kv_str("general.architecture", "llama");
    b.key("ids", ValueType::Array).u32(ValueType::U16.id()).len(2).raw(&[1, 0, 2, 0]);
    b.tinfo("t", &[4, 2], GgmlType::F16.id(), 0).pad(32).zeros(16);
    let f = lenient(&b.bytes()).unwrap();
    assert_eq!(f.version(), 1);
    assert_eq!(f.get_str("general.architecture"), Some("llama"));
    assert_eq!(f.get_array("ids").unwrap().as_u64s(), Some(vec![1, 2]));
    assert_eq!(f.tensor("t").unwrap().shape(), vec![2, 4]);
    // v1 minimal records are smaller: 9-byte KV pairs.
    let mut b = B::header(1, 0, 12);
    b.zeros(107);
    assert!(matches!(err(&b.bytes()), GgufError::CountExceedsRemaining { min_record_size: 9, .. }));
}

#[test]
fn error_messages_name_what_is_wrong() {
    let e = err(&one_tensor(&[8], 0, 0, 31));
    assert_eq!(e.to_string(), "tensor `t`: bytes 64..96 extend beyond the end of the 95-byte file");
    let mut b = B::header(3, 0, 1);
    b.kv_u32("general.alignment", 12).pad(32);
    assert_eq!(
        err(&b.bytes()).to_string(),
        "general.alignment must be a positive integer multiple of 8, found 12 (UINT32)"
    );
    let e = GgufFile::open("/nonexistent/model.gguf", &ReadOptions::default()).unwrap_err();
    assert!(matches!(e, GgufError::Io { .. }) && e.to_string().contains("/nonexistent/model.gguf"), "{e}");
}
