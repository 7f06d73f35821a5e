//! The hardened parser and [`GgufFile`].

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::path::Path;

use crate::bytes::{GgufBytes, TensorBytes};
use crate::error::{GgufError, Result};
use crate::types::{GgmlType, ValueType};
use crate::value::{Metadata, Value, ValueArray};

/// Cap on string lengths, in bytes (`GGUF_MAX_STRING_LENGTH`, as candle and llama.cpp).
pub const MAX_STRING_LEN: u64 = 1 << 30;
/// Cap on array lengths, in elements (`GGUF_MAX_ARRAY_ELEMENTS`).
pub const MAX_ARRAY_LEN: u64 = 1 << 30;
/// Cap on array nesting (`GGUF_MAX_VALUE_DEPTH`): arrays may nest this many levels, one more is rejected.
pub const MAX_DEPTH: u32 = 64;
/// Cap on tensor dimensions (`GGML_MAX_DIMS`).
pub const MAX_DIMS: u32 = 4;
/// Alignment of the data section and of tensor offsets when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// The metadata key that sets the alignment.
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// Longest metadata key the format allows (checked in strict mode).
pub const MAX_KEY_LEN: u64 = 65535;
/// Longest tensor name the format allows (checked in strict mode).
pub const MAX_TENSOR_NAME_LEN: usize = 64;
/// The parser recurses once per array level; [`ReadOptions::max_depth`] is clamped to this, so no setting can
/// exhaust the stack.
pub const HARD_MAX_DEPTH: u32 = 256;

/// Vectors sized from a (bounded) declared count start with at most this capacity and grow as elements are
/// actually parsed, so memory follows the bytes consumed, not the header's claim.
const PREALLOC_CAP: u64 = 4096;
/// The same for arrays nested inside arrays.
const NESTED_PREALLOC_CAP: u64 = 8;

/// Parser settings: the caps and the strictness of the format checks.
///
/// The default is lenient, like candle and llama.cpp: strings that are not valid UTF-8 are decoded lossily,
/// trailing NUL bytes are stripped from strings, any non-zero bool byte is `true`, and keys and tensor names may
/// be any length within `max_string_len`. [`ReadOptions::strict`] follows the GGUF specification to the letter.
/// The structural checks (caps, counts, bounds, alignment, duplicates, block multiples) apply in both modes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadOptions {
    /// Strict mode: keys ASCII and at most 65535 bytes, tensor names at most 64 bytes, bools 0 or 1, strings valid
    /// UTF-8 and kept exactly (trailing NULs included).
    pub strict: bool,
    /// Longest string accepted, in bytes (default [`MAX_STRING_LEN`] = 2^30).
    pub max_string_len: u64,
    /// Longest array accepted, in elements (default [`MAX_ARRAY_LEN`] = 2^30).
    pub max_array_len: u64,
    /// Deepest array nesting accepted (default [`MAX_DEPTH`] = 64; clamped to [`HARD_MAX_DEPTH`]).
    pub max_depth: u32,
    /// Most tensor dimensions accepted (default [`MAX_DIMS`] = 4).
    pub max_dims: u32,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            strict: false,
            max_string_len: MAX_STRING_LEN,
            max_array_len: MAX_ARRAY_LEN,
            max_depth: MAX_DEPTH,
            max_dims: MAX_DIMS,
        }
    }
}

impl ReadOptions {
    /// The lenient default ([`Default`]).
    pub fn lenient() -> Self {
        Self::default()
    }

    /// The default caps with strict format checks.
    pub fn strict() -> Self {
        ReadOptions { strict: true, ..Self::default() }
    }
}

/// One tensor's entry in the tensor-info table, validated against the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    name: String,
    ty: GgmlType,
    dims: Vec<u64>,
    offset: u64,
    nbytes: u64,
    start: usize,
}

impl TensorInfo {
    /// The tensor's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The element type.
    pub fn ty(&self) -> GgmlType {
        self.ty
    }

    /// The dims as stored in the file: innermost (contiguous) first, `ne0, ne1, ...`.
    pub fn dims_gguf(&self) -> &[u64] {
        &self.dims
    }

    /// The row-major shape: the GGUF dims reversed (a linear weight with dims `[in, out]` has shape
    /// `[out, in]`). Lossless: the parser rejects dims that do not fit `usize`.
    pub fn shape(&self) -> Vec<usize> {
        shape_of(&self.dims)
    }

    /// Number of elements (product of the dims).
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Offset of the tensor's bytes relative to the start of the data section (a multiple of the alignment).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Size in bytes: `(ne0 / B) · S · ne1 · ne2 · ne3`.
    pub fn nbytes(&self) -> usize {
        // Validated at parse time: the range lies inside the file, so it fits usize.
        self.nbytes as usize
    }

    /// Absolute byte range of the tensor in the file.
    pub fn range(&self) -> Range<usize> {
        self.start..self.start + self.nbytes()
    }
}

fn shape_of(dims: &[u64]) -> Vec<usize> {
    dims.iter().rev().map(|&d| usize::try_from(d).unwrap_or(usize::MAX)).collect()
}

/// A zero-copy view of one tensor: its name, type, GGUF dims and bytes, borrowed from the [`GgufFile`].
///
/// For a view that outlives the `GgufFile` borrow, use [`GgufFile::tensor_bytes`].
#[derive(Clone, Copy)]
pub struct TensorView<'a> {
    /// The tensor's name.
    pub name: &'a str,
    /// The element type.
    pub ty: GgmlType,
    /// Dims as stored in the file, innermost first (`ne0` contiguous).
    pub dims_gguf: &'a [u64],
    /// The tensor's bytes (exactly [`TensorView::nbytes`] of them).
    pub bytes: &'a [u8],
}

impl TensorView<'_> {
    /// The row-major shape: `dims_gguf` reversed.
    pub fn shape(&self) -> Vec<usize> {
        shape_of(self.dims_gguf)
    }

    /// Size in bytes.
    pub fn nbytes(&self) -> usize {
        self.bytes.len()
    }

    /// Number of elements.
    pub fn n_elements(&self) -> u64 {
        self.dims_gguf.iter().product()
    }
}

impl fmt::Debug for TensorView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TensorView")
            .field("name", &self.name)
            .field("ty", &self.ty)
            .field("dims_gguf", &self.dims_gguf)
            .field("nbytes", &self.bytes.len())
            .finish()
    }
}

/// A parsed, validated GGUF file: metadata in file order, tensor infos in file order with lookup by name, and
/// the file bytes (memory-mapped or owned) that tensor views borrow from.
///
/// Every invariant below holds for any `GgufFile` value, whatever bytes it was parsed from:
/// `data_start() % alignment() == 0`; every tensor offset is a multiple of the alignment; every tensor's
/// `nbytes == (ne0 / B) · S · ne1 · ...` with `ne0 % B == 0`; every tensor range lies inside the file; keys and
/// tensor names are unique.
pub struct GgufFile {
    bytes: GgufBytes,
    version: u32,
    alignment: u64,
    data_start: usize,
    metadata: Metadata,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version)
            .field("alignment", &self.alignment)
            .field("data_start", &self.data_start)
            .field("metadata_len", &self.metadata.len())
            .field("tensor_count", &self.tensors.len())
            .field("bytes", &self.bytes)
            .finish()
    }
}

impl GgufFile {
    /// Memory-maps `path` read-only and parses it.
    ///
    /// The file must not be modified or truncated while the returned value (or any [`GgufBytes`] /
    /// [`TensorBytes`] cloned from it) is alive: like every memory-mapping loader (llama.cpp, candle,
    /// safetensors), the mapping reflects later writes to the file, and a truncation makes reads fault.
    pub fn open(path: impl AsRef<Path>, opts: &ReadOptions) -> Result<Self> {
        let path = path.as_ref();
        let io = |source| GgufError::Io { path: path.to_owned(), source };
        let file = std::fs::File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len == 0 {
            // Mapping an empty file is an error on some platforms; an empty buffer gives the proper parse error.
            return Self::from_bytes(Vec::new(), opts);
        }
        // SAFETY: the map is read-only and private to this process's view of the file. The remaining hazard of
        // any file mapping, another process modifying or truncating the file while it is mapped, is outside
        // what Rust can check and is documented above as the caller's contract.
        let map = unsafe { memmap2::MmapOptions::new().map(&file) }.map_err(io)?;
        Self::from_bytes(map, opts)
    }

    /// Parses a borrowed buffer (the fuzz entry point). The header is validated on `bytes` first; only a valid
    /// file is then copied into an owned buffer. Use [`GgufFile::from_bytes`] to avoid the copy.
    pub fn parse(bytes: &[u8], opts: &ReadOptions) -> Result<Self> {
        let layout = parse_layout(bytes, opts)?;
        Ok(Self::assemble(GgufBytes::from(bytes.to_vec()), layout))
    }

    /// Parses owned or shared bytes without copying them: a `Vec<u8>`, `Box<[u8]>`, `Arc<[u8]>`,
    /// `&'static [u8]` or a `memmap2::Mmap`.
    pub fn from_bytes(bytes: impl Into<GgufBytes>, opts: &ReadOptions) -> Result<Self> {
        let bytes = bytes.into();
        let layout = parse_layout(&bytes, opts)?;
        Ok(Self::assemble(bytes, layout))
    }

    fn assemble(bytes: GgufBytes, layout: Layout) -> Self {
        let tensor_index = layout.tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        GgufFile {
            bytes,
            version: layout.version,
            alignment: layout.alignment,
            data_start: layout.data_start,
            metadata: layout.metadata,
            tensors: layout.tensors,
            tensor_index,
        }
    }

    /// The format version (1, 2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The alignment: `general.alignment`, or 32 when absent.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute offset of the data section (the end of the tensor-info table rounded up to the alignment).
    pub fn data_start(&self) -> usize {
        self.data_start
    }

    /// Length of the file in bytes.
    pub fn file_len(&self) -> usize {
        self.bytes.len()
    }

    /// The whole file, shareable: clone it to keep the mapping alive independently of `self`.
    pub fn bytes(&self) -> &GgufBytes {
        &self.bytes
    }

    /// All metadata, in file order.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// `key` as `u64`, widening any integer type with a non-negative value ([`Value::as_u64`]).
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.metadata.get_u64(key)
    }

    /// `key` as `i64` ([`Value::as_i64`]).
    pub fn get_i64(&self, key: &str) -> Option<i64> {
        self.metadata.get_i64(key)
    }

    /// `key` as `f64` ([`Value::as_f64`]).
    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.metadata.get_f64(key)
    }

    /// `key` as a string.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.metadata.get_str(key)
    }

    /// `key` as an array of strings.
    pub fn get_str_array(&self, key: &str) -> Option<Vec<&str>> {
        self.metadata.get_str_array(key)
    }

    /// `key` as a bool.
    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.metadata.get_bool(key)
    }

    /// `key` as an array.
    pub fn get_array(&self, key: &str) -> Option<&ValueArray> {
        self.metadata.get_array(key)
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Option<&str> {
        self.get_str("general.architecture")
    }

    /// Number of tensors.
    pub fn tensor_count(&self) -> usize {
        self.tensors.len()
    }

    /// The tensor infos, in file order.
    pub fn tensor_infos(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The info of tensor `name`.
    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).and_then(|&i| self.tensors.get(i))
    }

    /// Zero-copy views of all tensors, in file order.
    pub fn tensors(&self) -> impl ExactSizeIterator<Item = TensorView<'_>> + '_ {
        self.tensors.iter().map(|t| self.view(t))
    }

    /// A zero-copy view of tensor `name`.
    pub fn tensor(&self, name: &str) -> Option<TensorView<'_>> {
        self.tensor_info(name).map(|t| self.view(t))
    }

    /// The bytes of tensor `name` as an owned, `Arc`-shared view that keeps the file mapped.
    pub fn tensor_bytes(&self, name: &str) -> Option<TensorBytes> {
        self.bytes.slice(self.tensor_info(name)?.range())
    }

    /// The view of a tensor info of this file.
    pub fn view<'a>(&'a self, info: &'a TensorInfo) -> TensorView<'a> {
        TensorView {
            name: &info.name,
            ty: info.ty,
            dims_gguf: &info.dims,
            // Validated at parse time against these immutable bytes; `get` keeps this panic-free regardless.
            bytes: self.bytes.get(info.range()).unwrap_or_default(),
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Parser

struct Layout {
    version: u32,
    alignment: u64,
    data_start: usize,
    metadata: Metadata,
    tensors: Vec<TensorInfo>,
}

struct ArrayFrame {
    elem_type: ValueType,
    left: u64,
    values: Vec<Value>,
}

impl ArrayFrame {
    fn finish(self) -> Value {
        Value::Array(ValueArray { elem_type: self.elem_type, values: self.values })
    }
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

type What<'w> = &'w dyn Fn() -> String;

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos.min(self.buf.len())) as u64
    }

    fn take(&mut self, n: u64, what: What<'_>) -> Result<&'a [u8]> {
        let remaining = self.remaining();
        let end = usize::try_from(n).ok().and_then(|n| self.pos.checked_add(n));
        match end.and_then(|end| self.buf.get(self.pos..end).map(|s| (s, end))) {
            Some((s, end)) => {
                self.pos = end;
                Ok(s)
            }
            None => Err(GgufError::Truncated { what: what(), offset: self.pos as u64, needed: n, remaining }),
        }
    }

    fn array<const N: usize>(&mut self, what: What<'_>) -> Result<[u8; N]> {
        let s = self.take(N as u64, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(s);
        Ok(out)
    }

    fn u8(&mut self, what: What<'_>) -> Result<u8> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u32(&mut self, what: What<'_>) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: What<'_>) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
}

struct Parser<'a, 'o> {
    cur: Cursor<'a>,
    version: u32,
    opts: &'o ReadOptions,
}

impl<'a> Parser<'a, '_> {
    /// A count or length: `u32` in v1, `u64` from v2 on.
    fn len_field(&mut self, what: What<'_>) -> Result<u64> {
        if self.version == 1 { self.cur.u32(what).map(u64::from) } else { self.cur.u64(what) }
    }

    /// A string's raw bytes, the cap checked before the remaining bytes, so an oversized length gets its own
    /// error even in a short file.
    fn string_bytes(&mut self, what: What<'_>) -> Result<&'a [u8]> {
        let len = self.len_field(what)?;
        if len > self.opts.max_string_len {
            return Err(GgufError::StringTooLong { what: what(), len, max: self.opts.max_string_len });
        }
        self.cur.take(len, what)
    }

    fn decode(&self, bytes: &[u8], what: What<'_>) -> Result<String> {
        if self.opts.strict {
            std::str::from_utf8(bytes).map(str::to_owned).map_err(|_| GgufError::InvalidUtf8 { what: what() })
        } else {
            let mut s = String::from_utf8_lossy(bytes).into_owned();
            let keep = s.trim_end_matches('\0').len();
            s.truncate(keep);
            Ok(s)
        }
    }

    fn string(&mut self, what: What<'_>) -> Result<String> {
        let bytes = self.string_bytes(what)?;
        self.decode(bytes, what)
    }

    fn key(&mut self, index: u64) -> Result<String> {
        let what = || format!("key of metadata entry {index}");
        let bytes = self.string_bytes(&what)?;
        if self.opts.strict {
            if bytes.len() as u64 > MAX_KEY_LEN {
                let prefix = String::from_utf8_lossy(bytes).chars().take(64).collect();
                return Err(GgufError::KeyTooLong { prefix, len: bytes.len() as u64 });
            }
            if !bytes.is_ascii() {
                return Err(GgufError::NonAsciiKey { key: String::from_utf8_lossy(bytes).into_owned() });
            }
        }
        self.decode(bytes, &what)
    }

    fn value_type(&mut self, what: What<'_>) -> Result<ValueType> {
        let id = self.cur.u32(what)?;
        ValueType::from_id(id).ok_or_else(|| GgufError::UnknownValueType { what: what(), id })
    }

    /// One scalar or string value of type `ty`.
    fn scalar(&mut self, ty: ValueType, key: &str) -> Result<Value> {
        let what = || format!("value of `{key}`");
        let what: What<'_> = &what;
        Ok(match ty {
            ValueType::U8 => Value::U8(self.cur.u8(what)?),
            ValueType::I8 => Value::I8(i8::from_le_bytes(self.cur.array(what)?)),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.cur.array(what)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.cur.array(what)?)),
            ValueType::U32 => Value::U32(u32::from_le_bytes(self.cur.array(what)?)),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.cur.array(what)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.cur.array(what)?)),
            ValueType::U64 => Value::U64(u64::from_le_bytes(self.cur.array(what)?)),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.cur.array(what)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.cur.array(what)?)),
            ValueType::Bool => match self.cur.u8(what)? {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                byte if self.opts.strict => return Err(GgufError::InvalidBool { what: what(), byte }),
                _ => Value::Bool(true),
            },
            ValueType::String => Value::String(self.string(what)?),
            // Not reached from `value`, which parses arrays itself.
            ValueType::Array => return self.value(ty, key),
        })
    }

    /// An array's element type and length, checked against the caps and the remaining bytes; `depth` is the
    /// number of arrays enclosing it.
    fn array_header(&mut self, key: &str, depth: u32) -> Result<ArrayFrame> {
        let max_depth = self.opts.max_depth.min(HARD_MAX_DEPTH);
        if depth >= max_depth {
            return Err(GgufError::NestingTooDeep { key: key.to_owned(), max: max_depth });
        }
        let elem_type = self.value_type(&|| format!("element type of array `{key}`"))?;
        let len = self.len_field(&|| format!("length of array `{key}`"))?;
        if len > self.opts.max_array_len {
            return Err(GgufError::ArrayTooLong { key: key.to_owned(), len, max: self.opts.max_array_len });
        }
        let min = elem_type.min_encoded_size(self.version);
        let remaining = self.cur.remaining();
        if len.checked_mul(min).is_none_or(|need| need > remaining) {
            return Err(GgufError::CountExceedsRemaining {
                what: format!("array `{key}`"),
                count: len,
                min_record_size: min,
                remaining,
            });
        }
        // Nested frames start small, so a chain of nested arrays that each claim many elements cannot reserve
        // memory for all of them at once; vectors grow as elements are actually parsed.
        let cap = if depth == 0 { PREALLOC_CAP } else { NESTED_PREALLOC_CAP };
        Ok(ArrayFrame { elem_type, left: len, values: Vec::with_capacity(len.min(cap) as usize) })
    }

    /// One value of type `ty`. Nested arrays are parsed with an explicit stack (no recursion), so the depth cap,
    /// not the thread's stack size, bounds nesting.
    fn value(&mut self, ty: ValueType, key: &str) -> Result<Value> {
        if ty != ValueType::Array {
            return self.scalar(ty, key);
        }
        let mut current = self.array_header(key, 0)?;
        let mut parents: Vec<ArrayFrame> = Vec::new();
        loop {
            if current.left == 0 {
                let done = current.finish();
                match parents.pop() {
                    None => return Ok(done),
                    Some(mut parent) => {
                        parent.values.push(done);
                        current = parent;
                    }
                }
            } else {
                current.left -= 1;
                if current.elem_type == ValueType::Array {
                    // Enclosed by `current` and all its parents.
                    let depth = u32::try_from(parents.len() + 1).unwrap_or(u32::MAX);
                    let child = self.array_header(key, depth)?;
                    parents.push(std::mem::replace(&mut current, child));
                } else {
                    let v = self.scalar(current.elem_type, key)?;
                    current.values.push(v);
                }
            }
        }
    }

    fn tensor_info(&mut self, index: u64, alignment: u64, names: &HashMap<String, usize>) -> Result<TensorInfo> {
        let name = self.string(&|| format!("name of tensor info {index}"))?;
        if self.opts.strict && name.len() > MAX_TENSOR_NAME_LEN {
            let len = name.len();
            return Err(GgufError::TensorNameTooLong { name, len });
        }
        if names.contains_key(&name) {
            return Err(GgufError::DuplicateTensor { name });
        }
        let n_dims = self.cur.u32(&|| format!("n_dims of tensor `{name}`"))?;
        if n_dims > self.opts.max_dims {
            return Err(GgufError::TooManyDims { tensor: name, n_dims, max: self.opts.max_dims });
        }
        if n_dims == 0 {
            return Err(GgufError::NoDims { tensor: name });
        }
        let mut dims = Vec::with_capacity((n_dims as usize).min(PREALLOC_CAP as usize));
        for _ in 0..n_dims {
            dims.push(self.len_field(&|| format!("dims of tensor `{name}`"))?);
        }
        let type_id = self.cur.u32(&|| format!("type of tensor `{name}`"))?;
        let ty = GgmlType::from_id(type_id)
            .ok_or_else(|| GgufError::UnknownGgmlType { tensor: name.clone(), id: type_id })?;
        let offset = self.cur.u64(&|| format!("offset of tensor `{name}`"))?;

        // Element count: checked in u64, within ggml's int64 `ne`, and each dim and the total within usize so
        // that `shape()` is exact.
        let n_elements = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
        let fits = n_elements.is_some_and(|n| i64::try_from(n).is_ok() && usize::try_from(n).is_ok())
            && dims.iter().all(|&d| usize::try_from(d).is_ok());
        if !fits {
            return Err(GgufError::DimOverflow { tensor: name, dims });
        }
        let block_size = ty.block_size();
        if !dims[0].is_multiple_of(block_size) {
            return Err(GgufError::NotBlockMultiple { tensor: name, ty, ne0: dims[0], block_size });
        }
        let Some(nbytes) = ty.nbytes(&dims) else {
            return Err(GgufError::SizeOverflow { tensor: name, ty, dims, offset });
        };
        if !offset.is_multiple_of(alignment) {
            return Err(GgufError::MisalignedOffset { tensor: name, offset, alignment });
        }
        // `start` and `nbytes` are placeholders until the data section is located; both are range-checked then.
        Ok(TensorInfo { name, ty, dims, offset, nbytes, start: 0 })
    }
}

fn describe_alignment(v: &Value) -> String {
    match v.as_i64() {
        Some(n) => format!("{n} ({})", v.value_type()),
        None => match v {
            Value::U64(n) => format!("{n} (UINT64)"),
            _ => format!("a {} value", v.value_type()),
        },
    }
}

fn parse_layout(buf: &[u8], opts: &ReadOptions) -> Result<Layout> {
    let mut cur = Cursor { buf, pos: 0 };
    let magic: [u8; 4] = cur.array(&|| "magic".to_owned())?;
    if &magic != b"GGUF" {
        return Err(GgufError::BadMagic { found: magic });
    }
    let version = cur.u32(&|| "version".to_owned())?;
    if !(1..=3).contains(&version) {
        let hint = if (1..=3).contains(&version.swap_bytes()) { " (the file looks big-endian)" } else { "" };
        return Err(GgufError::UnsupportedVersion { version, hint });
    }
    let mut p = Parser { cur, version, opts };
    let n_tensors = p.len_field(&|| "tensor_count".to_owned())?;
    let n_kv = p.len_field(&|| "metadata_kv_count".to_owned())?;

    // Bound both counts by the bytes left before allocating anything, using minimal record sizes: a KV pair is at
    // least a key length, a type and one value byte; a tensor info a name length, n_dims, a type and an offset.
    let len_field = if version == 1 { 4 } else { 8 };
    let kv_min = len_field + 4 + 1;
    let ti_min = len_field + 4 + 4 + 8;
    let remaining = p.cur.remaining();
    let kv_need =
        n_kv.checked_mul(kv_min).filter(|&n| n <= remaining).ok_or_else(|| GgufError::CountExceedsRemaining {
            what: "metadata_kv_count".to_owned(),
            count: n_kv,
            min_record_size: kv_min,
            remaining,
        })?;
    let after_kv = remaining - kv_need;
    if n_tensors.checked_mul(ti_min).is_none_or(|n| n > after_kv) {
        return Err(GgufError::CountExceedsRemaining {
            what: "tensor_count (bytes left after the minimal metadata)".to_owned(),
            count: n_tensors,
            min_record_size: ti_min,
            remaining: after_kv,
        });
    }

    let mut metadata = Metadata::with_capacity(n_kv.min(PREALLOC_CAP) as usize);
    for i in 0..n_kv {
        let key = p.key(i)?;
        if metadata.contains_key(&key) {
            return Err(GgufError::DuplicateKey { key });
        }
        let ty = p.value_type(&|| format!("value type of `{key}`"))?;
        let value = p.value(ty, &key)?;
        if let Err((key, _)) = metadata.insert(key, value) {
            return Err(GgufError::DuplicateKey { key });
        }
    }

    let alignment = match metadata.get(ALIGNMENT_KEY) {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_u64() {
            Some(a) if a > 0 && a.is_multiple_of(8) => a,
            _ => return Err(GgufError::InvalidAlignment { found: describe_alignment(v) }),
        },
    };

    let mut tensors: Vec<TensorInfo> = Vec::with_capacity(n_tensors.min(PREALLOC_CAP) as usize);
    let mut names: HashMap<String, usize> = HashMap::with_capacity(n_tensors.min(PREALLOC_CAP) as usize);
    for j in 0..n_tensors {
        let info = p.tensor_info(j, alignment, &names)?;
        names.insert(info.name.clone(), tensors.len());
        tensors.push(info);
    }

    let file_len = buf.len() as u64;
    let header_end = p.cur.pos as u64;
    let data_start = match header_end.checked_next_multiple_of(alignment) {
        Some(s) if s <= file_len => s,
        s => return Err(GgufError::DataStartBeyondEof { data_start: s.unwrap_or(u64::MAX), file_len }),
    };
    for t in &mut tensors {
        let start = data_start.checked_add(t.offset);
        let end = start.and_then(|s| s.checked_add(t.nbytes));
        let (Some(start), Some(end)) = (start, end) else {
            return Err(GgufError::SizeOverflow {
                tensor: t.name.clone(),
                ty: t.ty,
                dims: t.dims.clone(),
                offset: t.offset,
            });
        };
        if end > file_len {
            return Err(GgufError::TensorOutOfBounds { tensor: t.name.clone(), start, end, file_len });
        }
        // Both fit usize: end <= file_len = buf.len().
        t.start = start as usize;
    }

    Ok(Layout { version, alignment, data_start: data_start as usize, metadata, tensors })
}
