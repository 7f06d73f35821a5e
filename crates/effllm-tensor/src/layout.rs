//! Shapes, strides and views.

use crate::{Error, Result};

/// How a tensor's elements map onto its storage: `element[i0, i1, ...]` lives at
/// `offset + Σ i_d · strides[d]` (strides in elements). Views (transpose, narrow, broadcast, ...) only change the
/// layout; the storage is shared.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Layout {
    shape: Vec<usize>,
    strides: Vec<usize>,
    offset: usize,
}

/// Row-major (C-order) strides of a shape.
pub fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![0; shape.len()];
    let mut acc = 1usize;
    for (s, &d) in strides.iter_mut().zip(shape).rev() {
        *s = acc;
        acc = acc.saturating_mul(d);
    }
    strides
}

/// Number of elements of a shape, or an error if it overflows `usize`.
pub fn checked_elem_count(op: &'static str, shape: &[usize]) -> Result<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).ok_or_else(|| Error::BadShape {
        op,
        shape: shape.to_vec(),
        msg: "element count overflows usize".into(),
    })
}

impl Layout {
    /// A contiguous row-major layout of `shape` starting at offset 0.
    pub fn contiguous(shape: &[usize]) -> Self {
        Layout { shape: shape.to_vec(), strides: contiguous_strides(shape), offset: 0 }
    }

    pub(crate) fn new(shape: Vec<usize>, strides: Vec<usize>, offset: usize) -> Self {
        Layout { shape, strides, offset }
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The strides, in elements.
    pub fn strides(&self) -> &[usize] {
        &self.strides
    }

    /// Offset of element `[0, 0, ...]` in the storage, in elements.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// Number of elements.
    pub fn elem_count(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether elements are stored densely in row-major order (dimensions of size 1 may have any stride).
    pub fn is_contiguous(&self) -> bool {
        let mut expected = 1usize;
        for (&d, &s) in self.shape.iter().zip(&self.strides).rev() {
            if d != 1 && s != expected {
                return false;
            }
            expected *= d;
        }
        true
    }

    /// The storage range `[start, end)` this layout can touch; `None` for an empty tensor.
    pub fn storage_span(&self) -> Option<(usize, usize)> {
        if self.shape.contains(&0) {
            return None;
        }
        let last: usize = self.shape.iter().zip(&self.strides).map(|(&d, &s)| (d - 1) * s).sum();
        Some((self.offset, self.offset + last + 1))
    }

    /// Storage offsets of every element in row-major order of the view.
    pub fn offsets(&self) -> StridedOffsets<'_> {
        StridedOffsets::new(self)
    }

    /// Calls `f(start, len, stride)` once per innermost run: the elements of each run are at
    /// `start + i·stride` for `i < len`, and runs come in row-major order. Faster than [`Layout::offsets`] for
    /// copies.
    pub fn for_each_run(&self, mut f: impl FnMut(usize, usize, usize)) {
        if self.shape.contains(&0) {
            return;
        }
        if self.shape.is_empty() {
            f(self.offset, 1, 1);
            return;
        }
        if self.is_contiguous() {
            f(self.offset, self.elem_count(), 1);
            return;
        }
        let rank = self.shape.len();
        let inner = self.shape[rank - 1];
        let inner_stride = self.strides[rank - 1];
        let outer = &self.shape[..rank - 1];
        let mut idx = vec![0usize; outer.len()];
        let mut base = self.offset;
        loop {
            f(base, inner, inner_stride);
            // Odometer increment over the outer dimensions.
            let mut d = outer.len();
            loop {
                if d == 0 {
                    return;
                }
                d -= 1;
                idx[d] += 1;
                base += self.strides[d];
                if idx[d] < outer[d] {
                    break;
                }
                base -= self.strides[d] * idx[d];
                idx[d] = 0;
            }
        }
    }

    pub(crate) fn check_dim(&self, op: &'static str, dim: usize) -> Result<()> {
        if dim >= self.rank() {
            return Err(Error::DimOutOfRange { op, dim, rank: self.rank() });
        }
        Ok(())
    }

    /// Swaps two dimensions (a view).
    pub fn transpose(&self, d0: usize, d1: usize) -> Result<Layout> {
        self.check_dim("transpose", d0)?;
        self.check_dim("transpose", d1)?;
        let mut l = self.clone();
        l.shape.swap(d0, d1);
        l.strides.swap(d0, d1);
        Ok(l)
    }

    /// Reorders dimensions: dimension `i` of the result is dimension `perm[i]` of `self`.
    pub fn permute(&self, perm: &[usize]) -> Result<Layout> {
        if perm.len() != self.rank() {
            return Err(Error::InvalidArgument {
                op: "permute",
                msg: format!("permutation {perm:?} has {} entries for rank {}", perm.len(), self.rank()),
            });
        }
        let mut seen = vec![false; perm.len()];
        for &p in perm {
            if p >= perm.len() || seen[p] {
                return Err(Error::InvalidArgument { op: "permute", msg: format!("{perm:?} is not a permutation") });
            }
            seen[p] = true;
        }
        Ok(Layout {
            shape: perm.iter().map(|&p| self.shape[p]).collect(),
            strides: perm.iter().map(|&p| self.strides[p]).collect(),
            offset: self.offset,
        })
    }

    /// Elements `start, start + step, ...` below `end` of dimension `dim` (a view).
    pub fn slice(&self, dim: usize, start: usize, end: usize, step: usize) -> Result<Layout> {
        self.check_dim("slice", dim)?;
        let size = self.shape[dim];
        if start > end || end > size {
            return Err(Error::InvalidArgument {
                op: "slice",
                msg: format!("range {start}..{end} does not fit dimension {dim} of size {size}"),
            });
        }
        if step == 0 {
            return Err(Error::InvalidArgument { op: "slice", msg: "step must be at least 1".into() });
        }
        let mut l = self.clone();
        let len = (end - start).div_ceil(step);
        if len > 0 {
            l.offset += start * self.strides[dim];
        }
        l.shape[dim] = len;
        l.strides[dim] = self.strides[dim] * step;
        Ok(l)
    }

    /// A view with `shape`, repeating dimensions of size 1 (and new leading dimensions) with stride 0.
    pub fn broadcast_as(&self, shape: &[usize]) -> Result<Layout> {
        if shape.len() < self.rank() {
            return Err(Error::ShapeMismatch { op: "broadcast_as", lhs: self.shape.clone(), rhs: shape.to_vec() });
        }
        // A view whose element count overflows could never be materialised, and the kernels size their outputs
        // and tiles by products of its dims: reject it here, where every broadcast view is made.
        checked_elem_count("broadcast_as", shape)?;
        let extra = shape.len() - self.rank();
        let mut strides = vec![0; shape.len()];
        for (i, (&d, &s)) in self.shape.iter().zip(&self.strides).enumerate() {
            let target = shape[extra + i];
            if d == target {
                strides[extra + i] = if d == 1 { 0 } else { s };
            } else if d == 1 {
                strides[extra + i] = 0;
            } else {
                return Err(Error::ShapeMismatch { op: "broadcast_as", lhs: self.shape.clone(), rhs: shape.to_vec() });
            }
        }
        Ok(Layout { shape: shape.to_vec(), strides, offset: self.offset })
    }
}

/// Iterator over the storage offsets of a layout, row-major.
#[derive(Debug)]
pub struct StridedOffsets<'a> {
    layout: &'a Layout,
    idx: Vec<usize>,
    next: Option<usize>,
}

impl<'a> StridedOffsets<'a> {
    fn new(layout: &'a Layout) -> Self {
        let next = if layout.shape.contains(&0) { None } else { Some(layout.offset) };
        StridedOffsets { layout, idx: vec![0; layout.rank()], next }
    }
}

impl Iterator for StridedOffsets<'_> {
    type Item = usize;
    fn next(&mut self) -> Option<usize> {
        let cur = self.next?;
        let shape = &self.layout.shape;
        let strides = &self.layout.strides;
        let mut pos = cur;
        let mut d = shape.len();
        loop {
            if d == 0 {
                self.next = None;
                break;
            }
            d -= 1;
            self.idx[d] += 1;
            pos += strides[d];
            if self.idx[d] < shape[d] {
                self.next = Some(pos);
                break;
            }
            pos -= strides[d] * self.idx[d];
            self.idx[d] = 0;
        }
        Some(cur)
    }
}

/// The broadcast shape of two shapes (numpy rules), or an error naming `op`.
pub fn broadcast_shape(op: &'static str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let rank = a.len().max(b.len());
    let mut out = vec![0; rank];
    for i in 0..rank {
        let da = if i + a.len() >= rank { a[i + a.len() - rank] } else { 1 };
        let db = if i + b.len() >= rank { b[i + b.len() - rank] } else { 1 };
        out[i] = if da == db || db == 1 {
            da
        } else if da == 1 {
            db
        } else {
            return Err(Error::ShapeMismatch { op, lhs: a.to_vec(), rhs: b.to_vec() });
        };
    }
    Ok(out)
}
