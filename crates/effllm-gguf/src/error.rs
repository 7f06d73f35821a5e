//! [`GgufError`]: one variant per way a file (or a writer input) can be wrong.

use std::path::PathBuf;

use crate::types::{GgmlType, ValueType};

/// Everything that can go wrong reading or writing a GGUF file. Each variant names what is wrong: the key, the
/// tensor, the offending number and the limit it broke.
///
/// `what` fields describe the location in the file, e.g. ``"key of metadata entry 3"``,
/// ``"value of `general.name`"`` or ``"dims of tensor `blk.0.attn_q.weight`"``.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GgufError {
    /// The file could not be opened, inspected or memory-mapped.
    #[error("cannot read GGUF file {path}: {source}")]
    Io {
        /// The path given to [`GgufFile::open`](crate::GgufFile::open).
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The file does not start with the bytes `GGUF`.
    #[error("not a GGUF file: magic bytes {found:02x?}, expected \"GGUF\" [47, 47, 55, 46]")]
    BadMagic {
        /// The first four bytes.
        found: [u8; 4],
    },
    /// The version is not 1, 2 or 3 (big-endian files show up here too).
    #[error("unsupported GGUF version {version} (supported: 1, 2, 3 little-endian){hint}")]
    UnsupportedVersion {
        /// The version field read as little-endian.
        version: u32,
        /// Extra explanation, e.g. that the file looks big-endian.
        hint: &'static str,
    },
    /// A field runs past the end of the file: the file is truncated, or a declared length is larger than the
    /// bytes that remain.
    #[error("{what} needs {needed} bytes at offset {offset}, but only {remaining} bytes remain (file truncated?)")]
    Truncated {
        /// The field being read.
        what: String,
        /// Its byte offset in the file.
        offset: u64,
        /// Bytes it needs (a declared length for strings).
        needed: u64,
        /// Bytes left in the file from `offset`.
        remaining: u64,
    },
    /// A declared count (tensor count, metadata count, array length) cannot fit in the remaining bytes even if
    /// every record had its minimal size; checked before anything is allocated.
    #[error(
        "{what} declares {count} entries of at least {min_record_size} bytes each, but only {remaining} bytes remain"
    )]
    CountExceedsRemaining {
        /// The count's name (`"tensor_count"`, `"metadata_kv_count"`, ``"array `key`"``).
        what: String,
        /// The declared count.
        count: u64,
        /// The fewest bytes one entry can take.
        min_record_size: u64,
        /// Bytes left in the file.
        remaining: u64,
    },
    /// A string is longer than [`ReadOptions::max_string_len`](crate::ReadOptions).
    #[error("{what}: string length {len} exceeds the cap of {max} bytes")]
    StringTooLong {
        /// The string being read.
        what: String,
        /// Its declared length.
        len: u64,
        /// The cap.
        max: u64,
    },
    /// An array is longer than [`ReadOptions::max_array_len`](crate::ReadOptions).
    #[error("metadata `{key}`: array length {len} exceeds the cap of {max} elements")]
    ArrayTooLong {
        /// The metadata key the array belongs to.
        key: String,
        /// Its declared length.
        len: u64,
        /// The cap.
        max: u64,
    },
    /// Arrays nest deeper than [`ReadOptions::max_depth`](crate::ReadOptions).
    #[error("metadata `{key}`: arrays nested more than {max} levels deep")]
    NestingTooDeep {
        /// The metadata key.
        key: String,
        /// The nesting cap.
        max: u32,
    },
    /// A metadata value (or array element) type id is not one of the 13 value types.
    #[error("{what}: unknown metadata value type {id} (known: 0..=12)")]
    UnknownValueType {
        /// Where the type id was found.
        what: String,
        /// The id.
        id: u32,
    },
    /// A bool is neither 0 nor 1 (strict mode only; lenient reads any non-zero byte as `true`).
    #[error("{what}: bool byte is {byte}, expected 0 or 1")]
    InvalidBool {
        /// Where the bool was found.
        what: String,
        /// The byte.
        byte: u8,
    },
    /// A string is not valid UTF-8 (strict mode only; lenient decodes lossily).
    #[error("{what}: string is not valid UTF-8")]
    InvalidUtf8 {
        /// The string being read.
        what: String,
    },
    /// A metadata key is not ASCII (strict mode only).
    #[error("metadata key {key:?} is not ASCII")]
    NonAsciiKey {
        /// The key (decoded lossily).
        key: String,
    },
    /// A metadata key is longer than 65535 bytes (strict mode only).
    #[error("metadata key of {len} bytes (starting {prefix:?}) exceeds 65535 bytes")]
    KeyTooLong {
        /// The first 64 characters of the key.
        prefix: String,
        /// The key's length in bytes.
        len: u64,
    },
    /// A metadata key appears twice.
    #[error("duplicate metadata key `{key}`")]
    DuplicateKey {
        /// The key.
        key: String,
    },
    /// `general.alignment` is not a positive multiple of 8.
    #[error("general.alignment must be a positive integer multiple of 8, found {found}")]
    InvalidAlignment {
        /// The value found, formatted.
        found: String,
    },
    /// A tensor name is longer than 64 bytes (strict mode only).
    #[error("tensor name `{name}` is {len} bytes long, more than the 64 the format allows")]
    TensorNameTooLong {
        /// The name.
        name: String,
        /// Its length in bytes.
        len: usize,
    },
    /// A tensor name appears twice.
    #[error("duplicate tensor name `{name}`")]
    DuplicateTensor {
        /// The name.
        name: String,
    },
    /// A tensor has more dimensions than [`ReadOptions::max_dims`](crate::ReadOptions).
    #[error("tensor `{tensor}` has {n_dims} dimensions, more than the cap of {max}")]
    TooManyDims {
        /// The tensor.
        tensor: String,
        /// Its declared dimension count.
        n_dims: u32,
        /// The cap.
        max: u32,
    },
    /// A tensor has zero dimensions.
    #[error("tensor `{tensor}` has no dimensions (n_dims = 0)")]
    NoDims {
        /// The tensor.
        tensor: String,
    },
    /// A tensor's ggml type id is unknown.
    #[error("tensor `{tensor}` has unknown ggml type id {id}")]
    UnknownGgmlType {
        /// The tensor.
        tensor: String,
        /// The type id found.
        id: u32,
    },
    /// The product of a tensor's dims overflows (u64, i64 as in ggml, or usize on this platform).
    #[error("tensor `{tensor}`: the element count of dims {dims:?} overflows")]
    DimOverflow {
        /// The tensor.
        tensor: String,
        /// Its GGUF dims (innermost first).
        dims: Vec<u64>,
    },
    /// A tensor's first dimension is not a multiple of its type's block size.
    #[error("tensor `{tensor}` ({ty}): ne0 = {ne0} is not a multiple of the block size {block_size}")]
    NotBlockMultiple {
        /// The tensor.
        tensor: String,
        /// Its type.
        ty: GgmlType,
        /// Its first (innermost) dimension.
        ne0: u64,
        /// The type's block size.
        block_size: u64,
    },
    /// A tensor's byte size, or `data_start + offset + size`, overflows.
    #[error("tensor `{tensor}` ({ty}, dims {dims:?}, offset {offset}): byte size or end offset overflows")]
    SizeOverflow {
        /// The tensor.
        tensor: String,
        /// Its type.
        ty: GgmlType,
        /// Its GGUF dims.
        dims: Vec<u64>,
        /// Its offset relative to the data section.
        offset: u64,
    },
    /// A tensor offset is not a multiple of the alignment.
    #[error("tensor `{tensor}`: offset {offset} is not a multiple of the alignment {alignment}")]
    MisalignedOffset {
        /// The tensor.
        tensor: String,
        /// Its offset relative to the data section.
        offset: u64,
        /// The file's alignment.
        alignment: u64,
    },
    /// The padded end of the tensor-info section lies beyond the end of the file.
    #[error("tensor data would start at byte {data_start}, beyond the end of the {file_len}-byte file")]
    DataStartBeyondEof {
        /// The aligned start of the data section.
        data_start: u64,
        /// The file length.
        file_len: u64,
    },
    /// A tensor's bytes extend past the end of the file.
    #[error("tensor `{tensor}`: bytes {start}..{end} extend beyond the end of the {file_len}-byte file")]
    TensorOutOfBounds {
        /// The tensor.
        tensor: String,
        /// Absolute start offset.
        start: u64,
        /// Absolute end offset (exclusive).
        end: u64,
        /// The file length.
        file_len: u64,
    },
    /// Writer: the input cannot be written as a valid file (the reason says what).
    #[error("cannot write GGUF: {reason}")]
    InvalidWriterInput {
        /// What is wrong.
        reason: String,
    },
    /// Writer: an array element's type differs from the array's element type.
    #[error("metadata `{key}`: array declared as {expected} contains a {found} element")]
    MixedArray {
        /// The metadata key.
        key: String,
        /// The array's declared element type.
        expected: ValueType,
        /// The element's type.
        found: ValueType,
    },
    /// Writer: the sink failed.
    #[error("writing GGUF failed: {0}")]
    Write(#[source] std::io::Error),
}

/// `Result` with [`GgufError`].
pub type Result<T, E = GgufError> = std::result::Result<T, E>;
