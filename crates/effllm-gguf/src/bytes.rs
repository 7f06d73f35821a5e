//! Shared, immutable file bytes: a memory map or an owned buffer behind an `Arc`.

use std::fmt;
use std::ops::{Deref, Range};
use std::sync::Arc;

enum Source {
    Mmap(memmap2::Mmap),
    Vec(Vec<u8>),
    Shared(Arc<[u8]>),
    Static(&'static [u8]),
}

/// The bytes of a GGUF file: a read-only memory map or an owned buffer, shared through an `Arc`.
///
/// Cloning is cheap (a reference-count increment), and a clone keeps the mapping alive, so a tensor crate can
/// hold zero-copy views ([`TensorBytes`]) after the [`GgufFile`](crate::GgufFile) is dropped. The bytes never
/// change after construction (every source is immutable), so offsets validated once stay valid.
#[derive(Clone)]
pub struct GgufBytes(Arc<Source>);

impl GgufBytes {
    /// The whole buffer.
    pub fn as_slice(&self) -> &[u8] {
        match &*self.0 {
            Source::Mmap(m) => m,
            Source::Vec(v) => v,
            Source::Shared(a) => a,
            Source::Static(s) => s,
        }
    }

    /// Whether the bytes come from a memory map.
    pub fn is_mmap(&self) -> bool {
        matches!(&*self.0, Source::Mmap(_))
    }

    /// A shared view of `range`, or `None` if it is not inside the buffer.
    pub fn slice(&self, range: Range<usize>) -> Option<TensorBytes> {
        self.as_slice().get(range.clone())?;
        Some(TensorBytes { data: self.clone(), range })
    }
}

impl Deref for GgufBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl AsRef<[u8]> for GgufBytes {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl fmt::Debug for GgufBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &*self.0 {
            Source::Mmap(_) => "mmap",
            Source::Vec(_) => "vec",
            Source::Shared(_) => "shared",
            Source::Static(_) => "static",
        };
        f.debug_struct("GgufBytes").field("source", &kind).field("len", &self.len()).finish()
    }
}

impl From<memmap2::Mmap> for GgufBytes {
    fn from(m: memmap2::Mmap) -> Self {
        GgufBytes(Arc::new(Source::Mmap(m)))
    }
}

impl From<Vec<u8>> for GgufBytes {
    fn from(v: Vec<u8>) -> Self {
        GgufBytes(Arc::new(Source::Vec(v)))
    }
}

impl From<Box<[u8]>> for GgufBytes {
    fn from(b: Box<[u8]>) -> Self {
        GgufBytes(Arc::new(Source::Vec(b.into_vec())))
    }
}

impl From<Arc<[u8]>> for GgufBytes {
    fn from(a: Arc<[u8]>) -> Self {
        GgufBytes(Arc::new(Source::Shared(a)))
    }
}

impl From<&'static [u8]> for GgufBytes {
    fn from(s: &'static [u8]) -> Self {
        GgufBytes(Arc::new(Source::Static(s)))
    }
}

/// A zero-copy view of one tensor's bytes that owns a share of the file ([`GgufBytes`]): `Send + Sync + 'static`,
/// cheap to clone, and keeps the memory map alive for as long as it exists.
#[derive(Clone)]
pub struct TensorBytes {
    data: GgufBytes,
    range: Range<usize>,
}

impl TensorBytes {
    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // The range was checked against the (immutable) buffer at construction.
        self.data.as_slice().get(self.range.clone()).unwrap_or_default()
    }

    /// The byte range inside the file.
    pub fn range(&self) -> Range<usize> {
        self.range.clone()
    }

    /// The file bytes this view points into.
    pub fn file_bytes(&self) -> &GgufBytes {
        &self.data
    }
}

impl Deref for TensorBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl AsRef<[u8]> for TensorBytes {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl fmt::Debug for TensorBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TensorBytes").field("range", &self.range).field("source", &self.data).finish()
    }
}
