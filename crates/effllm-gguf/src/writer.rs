//! [`GgufWriter`]: a minimal writer for tests, fixtures and tools.

use std::borrow::Cow;
use std::collections::HashSet;
use std::io::Write;
use std::path::Path;

use crate::error::{GgufError, Result};
use crate::reader::{ALIGNMENT_KEY, DEFAULT_ALIGNMENT, GgufFile};
use crate::types::GgmlType;
use crate::value::Value;

struct WriterTensor<'a> {
    name: String,
    ty: GgmlType,
    dims: Vec<u64>,
    data: Cow<'a, [u8]>,
}

/// Builds a GGUF file in memory and writes it out: metadata of all 13 value types (in insertion order) and
/// tensors (raw bytes in any [`GgmlType`]), laid out like gguf-py's and llama.cpp's writers.
///
/// Layout: header, metadata, tensor infos, zero padding to the alignment, then each tensor's bytes at the next
/// multiple of the alignment (offsets relative to the data section). The alignment is taken from the
/// `general.alignment` entry if present (as a reader would), else 32; [`GgufWriter::set_alignment`] sets that
/// entry. By default nothing follows the last tensor, so every strict prefix of the output is an invalid file;
/// [`GgufWriter::set_pad_tail`] also pads the end to the alignment, which reproduces gguf-py's output byte for
/// byte (and what llama.cpp's non-mmap loader reads).
///
/// Everything is validated when writing: unique keys and tensor names, homogeneous arrays, a valid alignment,
/// tensor byte lengths equal to `(ne0 / B) · S · ne1 · ...` with `ne0 % B == 0`, and for version 1 that counts,
/// lengths and dims fit `u32`. Array nesting is not limited here; readers reject more than 64 levels.
pub struct GgufWriter<'a> {
    version: u32,
    pad_tail: bool,
    metadata: Vec<(String, Value)>,
    tensors: Vec<WriterTensor<'a>>,
}

impl std::fmt::Debug for GgufWriter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufWriter")
            .field("version", &self.version)
            .field("pad_tail", &self.pad_tail)
            .field("metadata_len", &self.metadata.len())
            .field("tensor_count", &self.tensors.len())
            .finish()
    }
}

impl Default for GgufWriter<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'a> GgufWriter<'a> {
    /// An empty version-3 file.
    pub fn new() -> Self {
        GgufWriter { version: 3, pad_tail: false, metadata: Vec::new(), tensors: Vec::new() }
    }

    /// A writer holding a copy of `file`'s metadata and borrowing its tensors' bytes (same version, order and
    /// alignment). Writing it re-lays out the data section densely, in tensor-info order.
    pub fn from_file(file: &'a GgufFile) -> Self {
        let mut w = GgufWriter::new();
        w.version = file.version();
        w.metadata = file.metadata().iter().map(|(k, v)| (k.to_owned(), v.clone())).collect();
        for t in file.tensors() {
            w.tensors.push(WriterTensor {
                name: t.name.to_owned(),
                ty: t.ty,
                dims: t.dims_gguf.to_vec(),
                data: Cow::Borrowed(t.bytes),
            });
        }
        w
    }

    /// Sets the format version (1, 2 or 3; version 1 stores counts, lengths and dims as `u32`).
    pub fn set_version(&mut self, version: u32) -> &mut Self {
        self.version = version;
        self
    }

    /// Pads the end of the data section to the alignment (gguf-py and llama.cpp do; off by default).
    pub fn set_pad_tail(&mut self, pad: bool) -> &mut Self {
        self.pad_tail = pad;
        self
    }

    /// Sets `general.alignment` (as `u32` when it fits, else `u64`), replacing an earlier value in place or
    /// appending it.
    pub fn set_alignment(&mut self, alignment: u64) -> &mut Self {
        let v = u32::try_from(alignment).map(Value::U32).unwrap_or(Value::U64(alignment));
        match self.metadata.iter_mut().find(|(k, _)| k == ALIGNMENT_KEY) {
            Some(entry) => entry.1 = v,
            None => self.metadata.push((ALIGNMENT_KEY.to_owned(), v)),
        }
        self
    }

    /// Appends a metadata pair.
    pub fn add(&mut self, key: impl Into<String>, value: impl Into<Value>) -> &mut Self {
        self.metadata.push((key.into(), value.into()));
        self
    }

    /// Appends a tensor: its name, type, GGUF dims (innermost first) and raw bytes.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        ty: GgmlType,
        dims_gguf: &[u64],
        data: impl Into<Cow<'a, [u8]>>,
    ) -> &mut Self {
        self.tensors.push(WriterTensor { name: name.into(), ty, dims: dims_gguf.to_vec(), data: data.into() });
        self
    }

    /// The alignment the output will use: `general.alignment` if set, else 32.
    pub fn alignment(&self) -> Result<u64> {
        match self.metadata.iter().find(|(k, _)| k == ALIGNMENT_KEY) {
            None => Ok(DEFAULT_ALIGNMENT),
            Some((_, v)) => match v.as_u64() {
                Some(a) if a > 0 && a.is_multiple_of(8) => Ok(a),
                _ => Err(GgufError::InvalidAlignment { found: format!("{v:?}") }),
            },
        }
    }

    fn validate(&self) -> Result<(u64, Vec<u64>)> {
        if !(1..=3).contains(&self.version) {
            return Err(invalid(format!("version {} (supported: 1, 2, 3)", self.version)));
        }
        let v1 = self.version == 1;
        let alignment = self.alignment()?;
        if v1 && (self.metadata.len() > u32::MAX as usize || self.tensors.len() > u32::MAX as usize) {
            return Err(invalid("version 1 counts must fit u32".to_owned()));
        }
        let mut keys = HashSet::new();
        for (k, v) in &self.metadata {
            if !keys.insert(k.as_str()) {
                return Err(GgufError::DuplicateKey { key: k.clone() });
            }
            check_len(v1, k.len(), || format!("key `{k}`"))?;
            check_value(v1, k, v)?;
        }
        let mut names = HashSet::new();
        let mut offsets = Vec::with_capacity(self.tensors.len());
        let mut offset = 0u64;
        for t in &self.tensors {
            if !names.insert(t.name.as_str()) {
                return Err(GgufError::DuplicateTensor { name: t.name.clone() });
            }
            check_len(v1, t.name.len(), || format!("tensor name `{}`", t.name))?;
            let Some(&ne0) = t.dims.first() else {
                return Err(GgufError::NoDims { tensor: t.name.clone() });
            };
            if v1 && t.dims.iter().any(|&d| d > u64::from(u32::MAX)) {
                return Err(invalid(format!("tensor `{}`: version 1 dims must fit u32, got {:?}", t.name, t.dims)));
            }
            let block_size = t.ty.block_size();
            if !ne0.is_multiple_of(block_size) {
                return Err(GgufError::NotBlockMultiple { tensor: t.name.clone(), ty: t.ty, ne0, block_size });
            }
            let overflow =
                || GgufError::SizeOverflow { tensor: t.name.clone(), ty: t.ty, dims: t.dims.clone(), offset };
            let nbytes = t.ty.nbytes(&t.dims).ok_or_else(overflow)?;
            if nbytes != t.data.len() as u64 {
                return Err(invalid(format!(
                    "tensor `{}` ({}, dims {:?}) needs {nbytes} bytes, got {}",
                    t.name,
                    t.ty,
                    t.dims,
                    t.data.len()
                )));
            }
            offsets.push(offset);
            offset =
                offset.checked_add(nbytes).and_then(|e| e.checked_next_multiple_of(alignment)).ok_or_else(overflow)?;
        }
        Ok((alignment, offsets))
    }

    /// Validates and writes the file to `w`; returns the number of bytes written.
    pub fn write_to<W: Write>(&self, w: &mut W) -> Result<u64> {
        let (alignment, offsets) = self.validate()?;
        let mut out = Out { w, pos: 0, v1: self.version == 1 };
        out.bytes(b"GGUF")?;
        out.bytes(&self.version.to_le_bytes())?;
        out.len(self.tensors.len() as u64)?;
        out.len(self.metadata.len() as u64)?;
        for (k, v) in &self.metadata {
            out.string(k)?;
            out.bytes(&v.value_type().id().to_le_bytes())?;
            out.value(v)?;
        }
        for (t, &offset) in self.tensors.iter().zip(&offsets) {
            out.string(&t.name)?;
            out.bytes(&(t.dims.len() as u32).to_le_bytes())?;
            for &d in &t.dims {
                out.len(d)?;
            }
            out.bytes(&t.ty.id().to_le_bytes())?;
            out.bytes(&offset.to_le_bytes())?;
        }
        out.pad(alignment)?;
        for (i, t) in self.tensors.iter().enumerate() {
            out.bytes(&t.data)?;
            if self.pad_tail || i + 1 < self.tensors.len() {
                out.pad(alignment)?;
            }
        }
        Ok(out.pos)
    }

    /// Validates and returns the file as bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut v = Vec::new();
        self.write_to(&mut v)?;
        Ok(v)
    }

    /// Validates and writes the file to `path` (created or truncated).
    pub fn write_file(&self, path: impl AsRef<Path>) -> Result<()> {
        let bytes = self.to_bytes()?;
        std::fs::write(path, bytes).map_err(GgufError::Write)
    }
}

fn invalid(reason: String) -> GgufError {
    GgufError::InvalidWriterInput { reason }
}

fn check_len(v1: bool, len: usize, what: impl FnOnce() -> String) -> Result<()> {
    if v1 && len > u32::MAX as usize {
        return Err(invalid(format!("{}: version 1 lengths must fit u32, got {len}", what())));
    }
    Ok(())
}

fn check_value(v1: bool, key: &str, v: &Value) -> Result<()> {
    match v {
        Value::String(s) => check_len(v1, s.len(), || format!("value of `{key}`")),
        Value::Array(a) => {
            check_len(v1, a.values.len(), || format!("array `{key}`"))?;
            for e in &a.values {
                let found = e.value_type();
                if found != a.elem_type {
                    return Err(GgufError::MixedArray { key: key.to_owned(), expected: a.elem_type, found });
                }
                check_value(v1, key, e)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

struct Out<'w, W: Write> {
    w: &'w mut W,
    pos: u64,
    v1: bool,
}

impl<W: Write> Out<'_, W> {
    fn bytes(&mut self, b: &[u8]) -> Result<()> {
        self.w.write_all(b).map_err(GgufError::Write)?;
        self.pos += b.len() as u64;
        Ok(())
    }

    fn len(&mut self, n: u64) -> Result<()> {
        // Validated: in version 1 every length fits u32.
        if self.v1 { self.bytes(&(n as u32).to_le_bytes()) } else { self.bytes(&n.to_le_bytes()) }
    }

    fn string(&mut self, s: &str) -> Result<()> {
        self.len(s.len() as u64)?;
        self.bytes(s.as_bytes())
    }

    fn pad(&mut self, alignment: u64) -> Result<()> {
        const ZEROS: [u8; 64] = [0; 64];
        let mut n = self.pos.next_multiple_of(alignment) - self.pos;
        while n > 0 {
            let k = n.min(ZEROS.len() as u64);
            self.bytes(&ZEROS[..k as usize])?;
            n -= k;
        }
        Ok(())
    }

    fn value(&mut self, v: &Value) -> Result<()> {
        match v {
            Value::U8(x) => self.bytes(&x.to_le_bytes()),
            Value::I8(x) => self.bytes(&x.to_le_bytes()),
            Value::U16(x) => self.bytes(&x.to_le_bytes()),
            Value::I16(x) => self.bytes(&x.to_le_bytes()),
            Value::U32(x) => self.bytes(&x.to_le_bytes()),
            Value::I32(x) => self.bytes(&x.to_le_bytes()),
            Value::F32(x) => self.bytes(&x.to_le_bytes()),
            Value::Bool(x) => self.bytes(&[u8::from(*x)]),
            Value::String(s) => self.string(s),
            Value::Array(a) => {
                self.bytes(&a.elem_type.id().to_le_bytes())?;
                self.len(a.values.len() as u64)?;
                a.values.iter().try_for_each(|e| self.value(e))
            }
            Value::U64(x) => self.bytes(&x.to_le_bytes()),
            Value::I64(x) => self.bytes(&x.to_le_bytes()),
            Value::F64(x) => self.bytes(&x.to_le_bytes()),
        }
    }
}
