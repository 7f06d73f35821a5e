//! # effllm-gguf
//!
//! A hardened reader for [GGUF](https://github.com/ggml-org/ggml/blob/master/docs/gguf.md) model files
//! (versions 1, 2 and 3, little-endian): the file is memory-mapped read-only, metadata is decoded into
//! [`Value`]s in file order, tensor infos are validated against the file, and tensors are exposed as zero-copy
//! [`TensorView`]s (borrowed) or [`TensorBytes`] (`Arc`-shared, keeping the mapping alive). A minimal
//! [`GgufWriter`] produces files for tests and tools. Dequantization lives in `effllm-tensor`.
//!
//! ## Format
//!
//! All integers little-endian. `string = len: u64 | bytes[len]` (UTF-8, not NUL-terminated).
//!
//! ```text
//! header     magic "GGUF" (47 47 55 46) | version: u32 | tensor_count: u64 | metadata_kv_count: u64
//! kv[i]      key: string | value_type: u32 | value
//! tinfo[j]   name: string | n_dims: u32 | dims: u64[n_dims] | ggml_type: u32 | offset: u64
//! padding    0x00 up to a multiple of ALIGNMENT            (data_start = align(end of tinfo))
//! data       tensor j at data_start + offset_j; offsets are multiples of ALIGNMENT, gaps are zero padding
//!
//! value      scalar (u8 i8 u16 i16 u32 i32 f32 bool u64 i64 f64) | string
//!            | array = elem_type: u32 | len: u64 | len values of elem_type   (arrays nest)
//! ```
//!
//! - Version 1 stores counts, string and array lengths, and dims as `u32`.
//! - `ALIGNMENT` is the `general.alignment` value (any non-negative integer type; must be a positive multiple
//!   of 8), default 32.
//! - `dims` are innermost first (`ne0` is contiguous): the row-major [`TensorView::shape`] is the reversed list,
//!   so a linear weight stored with dims `[in, out]` has shape `[out, in]`.
//! - A tensor's size is `(ne0 / B) · S · ne1 · ne2 · ne3` for its type's block of `B` elements in `S` bytes
//!   ([`GgmlType::block_layout`]), and `ne0 % B == 0` is required.
//!
//! ## Hardening
//!
//! Any byte string gives `Ok` or a typed [`GgufError`]; the parser never panics and never allocates from an
//! unchecked header field (memory stays O(input length)). Checks, each with its own error variant:
//!
//! | check | limit | error |
//! |---|---|---|
//! | string length | `max_string_len`, default 2^30 bytes, then the bytes left | [`GgufError::StringTooLong`], [`GgufError::Truncated`] |
//! | array length | `max_array_len`, default 2^30 elements, then `len · min size ≤ bytes left` | [`GgufError::ArrayTooLong`], [`GgufError::CountExceedsRemaining`] |
//! | array nesting | `max_depth`, default 64 levels | [`GgufError::NestingTooDeep`] |
//! | tensor dimensions | `max_dims`, default 4; at least 1 | [`GgufError::TooManyDims`], [`GgufError::NoDims`] |
//! | tensor / KV counts | `count · minimal record ≤ bytes left` (KV ≥ 13 B, tensor info ≥ 24 B) before allocating | [`GgufError::CountExceedsRemaining`] |
//! | dim product, byte size, `offset + size` | checked arithmetic (product within `i64` and `usize`) | [`GgufError::DimOverflow`], [`GgufError::SizeOverflow`] |
//! | tensor offsets | multiples of the alignment | [`GgufError::MisalignedOffset`] |
//! | tensor ranges | inside the file | [`GgufError::TensorOutOfBounds`], [`GgufError::DataStartBeyondEof`] |
//! | alignment | positive multiple of 8 | [`GgufError::InvalidAlignment`] |
//! | types | 13 value types; ggml type ids of [`GgmlType`] | [`GgufError::UnknownValueType`], [`GgufError::UnknownGgmlType`] (names the tensor and the id) |
//! | uniqueness | keys, tensor names | [`GgufError::DuplicateKey`], [`GgufError::DuplicateTensor`] |
//! | block multiple | `ne0 % B == 0` | [`GgufError::NotBlockMultiple`] |
//! | truncation | every field | [`GgufError::Truncated`]; every strict prefix of a [`GgufWriter`] file is rejected |
//!
//! [`ReadOptions`] holds the caps. The default is lenient like candle and llama.cpp (strings decoded lossily with
//! trailing NULs stripped, any non-zero bool byte is `true`); [`ReadOptions::strict`] also requires ASCII keys of
//! at most 65535 bytes, tensor names of at most 64 bytes, bools 0 or 1 and valid UTF-8.
//!
//! ## Example
//!
//! ```
//! use effllm_gguf::{GgmlType, GgufFile, GgufWriter, ReadOptions, Value, ValueType};
//!
//! # fn main() -> Result<(), effllm_gguf::GgufError> {
//! // A linear weight [out = 2, in = 3] is stored with GGUF dims [3, 2].
//! let w: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0].iter().flat_map(|x| x.to_le_bytes()).collect();
//! let mut writer = GgufWriter::new();
//! writer
//!     .add("general.architecture", "llama")
//!     .add("llama.block_count", 30u32)
//!     .add("tokenizer.ggml.tokens", Value::string_array(["<s>", "a", "b"]))
//!     .add("nested", Value::array(ValueType::Array, [Value::array(ValueType::I8, [-1i8, 2])]))
//!     .set_alignment(64)
//!     .add_tensor("w.weight", GgmlType::F32, &[3, 2], w.as_slice());
//! let bytes = writer.to_bytes()?;
//!
//! let file = GgufFile::parse(&bytes, &ReadOptions::default())?;
//! assert_eq!(file.version(), 3);
//! assert_eq!(file.alignment(), 64);
//! assert_eq!(file.data_start() % 64, 0);
//! assert_eq!(file.get_str("general.architecture"), Some("llama"));
//! assert_eq!(file.get_u64("llama.block_count"), Some(30)); // u32 widened
//! assert_eq!(file.get_str_array("tokenizer.ggml.tokens"), Some(vec!["<s>", "a", "b"]));
//!
//! let t = file.tensor("w.weight").expect("tensor present");
//! assert_eq!(t.dims_gguf, &[3, 2]);
//! assert_eq!(t.shape(), vec![2, 3]); // row-major
//! let row1: Vec<f32> = t.bytes[12..24].chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
//! assert_eq!(row1, [4.0, 5.0, 6.0]);
//!
//! // Hostile input is a typed error, never a panic.
//! let err = GgufFile::parse(&bytes[..bytes.len() - 1], &ReadOptions::default()).unwrap_err();
//! assert!(matches!(err, effllm_gguf::GgufError::TensorOutOfBounds { .. }));
//! # Ok(())
//! # }
//! ```
//!
//! [`GgufFile::open`] memory-maps a file; [`GgufFile::tensor_bytes`] returns an owned view that a tensor crate can
//! keep (it holds an `Arc` of the mapping). [`model_cache`] locates the project's SmolLM2 model.
#![deny(missing_docs)]

mod bytes;
mod error;
mod fuzz;
pub mod model_cache;
mod reader;
mod types;
mod value;
mod writer;

pub use bytes::{GgufBytes, TensorBytes};
pub use error::{GgufError, Result};
#[doc(hidden)]
pub use fuzz::fuzz_parse;
pub use reader::{
    ALIGNMENT_KEY, DEFAULT_ALIGNMENT, GgufFile, HARD_MAX_DEPTH, MAX_ARRAY_LEN, MAX_DEPTH, MAX_DIMS, MAX_KEY_LEN,
    MAX_STRING_LEN, MAX_TENSOR_NAME_LEN, ReadOptions, TensorInfo, TensorView,
};
pub use types::{GgmlType, ValueType};
pub use value::{Metadata, Value, ValueArray};
pub use writer::GgufWriter;
