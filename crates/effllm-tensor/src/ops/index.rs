//! Data movement by index: `index_select`, `embedding`, `gather`, `scatter`, `scatter_add`, `concat`.

use crate::cpu::{CpuStorage, map_storage_same};
use crate::ops::reduce::split_at_dim;
use crate::tensor::{Work, WorkOut, on_cuda};
use crate::{DType, Error, Result, Tensor, WithDType};

fn check_ids(op: &'static str, ids: &[u32], size: usize) -> Result<()> {
    if let Some(&bad) = ids.iter().find(|&&i| i as usize >= size) {
        return Err(Error::IndexOutOfBounds { op, index: bad as usize, size });
    }
    Ok(())
}

impl Tensor {
    /// Selects entries `ids` (a 1-D u32 tensor) along `dim`: the result has `ids.len()` in place of `dim`.
    pub fn index_select(&self, dim: usize, ids: &Tensor) -> Result<Tensor> {
        crate::autograd::op(
            "index_select",
            &[self],
            || self.index_select_fwd(dim, ids),
            |_| crate::autograd::rules::index_select(self, dim, ids),
        )
    }

    fn index_select_fwd(&self, dim: usize, ids: &Tensor) -> Result<Tensor> {
        const OP: &str = "index_select";
        ids.check_index_dtype(OP)?;
        self.check_same_device(OP, ids)?;
        self.layout.check_dim(OP, dim)?;
        if ids.rank() != 1 {
            return Err(Error::BadShape { op: OP, shape: ids.shape().to_vec(), msg: "ids must be 1-D".into() });
        }
        let idx = ids.to_vec::<u32>()?;
        let (outer, n, inner) = split_at_dim(self.shape(), dim);
        check_ids(OP, &idx, n)?;
        crate::tensor::on_cuda!(self, crate::cuda::ops::index_select(self, dim, ids));
        let src = self.contiguous()?;
        let storage = map_storage_same!(src.cpu_storage(), v => {
            let v = &v[src.layout.offset()..];
            let mut out = Vec::with_capacity(outer * idx.len() * inner);
            for o in 0..outer {
                for &i in &idx {
                    let s = (o * n + i as usize) * inner;
                    out.extend_from_slice(&v[s..s + inner]);
                }
            }
            out
        });
        let mut shape = self.shape().to_vec();
        shape[dim] = idx.len();
        Ok(Tensor::from_storage(storage, &shape))
    }

    /// Embedding lookup: `self` is a `[vocab, d]` table, `ids` a u32 tensor of any shape; returns `ids.shape + [d]`.
    pub fn embedding(&self, ids: &Tensor) -> Result<Tensor> {
        if self.rank() != 2 {
            return Err(Error::BadShape {
                op: "embedding",
                shape: self.shape().to_vec(),
                msg: "table must be [vocab, d]".into(),
            });
        }
        let flat = ids.reshape(&[ids.elem_count()])?;
        let rows = self.index_select(0, &flat)?;
        let mut shape = ids.shape().to_vec();
        shape.push(self.shape()[1]);
        rows.reshape(&shape)
    }

    /// `out[i][j] = self[index[i][j]][j]` for `dim = 0` (PyTorch `gather`): `index` (u32) has the rank of `self`,
    /// every dimension other than `dim` no larger than `self`'s; the result has `index`'s shape.
    pub fn gather(&self, dim: usize, index: &Tensor) -> Result<Tensor> {
        crate::autograd::op(
            "gather",
            &[self],
            || self.gather_fwd(dim, index),
            |_| crate::autograd::rules::gather(self, dim, index),
        )
    }

    fn gather_fwd(&self, dim: usize, index: &Tensor) -> Result<Tensor> {
        const OP: &str = "gather";
        index.check_index_dtype(OP)?;
        self.check_same_device(OP, index)?;
        self.layout.check_dim(OP, dim)?;
        if index.rank() != self.rank()
            || index.shape().iter().zip(self.shape()).enumerate().any(|(d, (&i, &s))| d != dim && i > s)
        {
            return Err(Error::ShapeMismatch { op: OP, lhs: self.shape().to_vec(), rhs: index.shape().to_vec() });
        }
        let idx = index.to_vec::<u32>()?;
        check_ids(OP, &idx, self.shape()[dim])?;
        on_cuda!(self, crate::cuda::ops::gather(self, dim, index));
        let strides = self.layout.strides().to_vec();
        let ishape = index.shape().to_vec();
        let base = self.layout.offset();
        let positions: Vec<usize> = index_positions(&ishape)
            .map(|(flat, coord)| {
                coord
                    .iter()
                    .enumerate()
                    .fold(base, |acc, (d, &c)| acc + strides[d] * if d == dim { idx[flat] as usize } else { c })
            })
            .collect();
        let storage = map_storage_same!(self.cpu_storage(), v => positions.iter().map(|&p| v[p]).collect());
        Ok(Tensor::from_storage(storage, &ishape))
    }

    /// A copy of `self` with `out[index[i][j]][j] = src[i][j]` for `dim = 0` (PyTorch `scatter`). With repeated
    /// indices the last write in row-major order of `index` wins (deterministic, also on CUDA, where the result is
    /// the CPU's bit for bit).
    pub fn scatter(&self, dim: usize, index: &Tensor, src: &Tensor) -> Result<Tensor> {
        crate::autograd::op(
            "scatter",
            &[self, src],
            || self.scatter_impl("scatter", dim, index, src, false),
            |_| crate::autograd::rules::scatter(self.shape(), src, dim, index),
        )
    }

    /// Like [`Tensor::scatter`] but adds into the copy: `out[index[i][j]][j] += src[i][j]` (float dtypes).
    ///
    /// The sums run in row-major order of `index`, in f32 for f16/bf16 (rounded once) — on CUDA too, so the result
    /// is the CPU's bit for bit (except the payload of a NaN sum) and does not change between runs.
    pub fn scatter_add(&self, dim: usize, index: &Tensor, src: &Tensor) -> Result<Tensor> {
        crate::autograd::op(
            "scatter_add",
            &[self, src],
            || self.scatter_impl("scatter_add", dim, index, src, true),
            |_| crate::autograd::rules::scatter_add(src, dim, index),
        )
    }

    fn scatter_impl(&self, op: &'static str, dim: usize, index: &Tensor, src: &Tensor, add: bool) -> Result<Tensor> {
        index.check_index_dtype(op)?;
        self.check_same_dtype(op, src)?;
        self.check_same_device(op, index)?;
        self.check_same_device(op, src)?;
        self.layout.check_dim(op, dim)?;
        let ok_rank = index.rank() == self.rank() && src.rank() == self.rank();
        if !ok_rank
            || index.shape().iter().zip(self.shape()).enumerate().any(|(d, (&i, &s))| d != dim && i > s)
            || index.shape().iter().zip(src.shape()).any(|(&i, &s)| i > s)
        {
            return Err(Error::ShapeMismatch { op, lhs: self.shape().to_vec(), rhs: index.shape().to_vec() });
        }
        on_cuda!(self, crate::cuda::ops::scatter(self, op, dim, index, src, add));
        let idx = index.to_vec::<u32>()?;
        check_ids(op, &idx, self.shape()[dim])?;
        // Half-precision sources are widened once so that `scatter_add` accumulates in f32 and the positions below
        // refer to the storage actually read.
        let src = &if add && matches!(src.dtype(), crate::DType::F16 | crate::DType::BF16) {
            src.to_dtype(crate::DType::F32)?
        } else {
            src.clone()
        };
        let out_strides = crate::layout::contiguous_strides(self.shape());
        let src_strides = src.layout.strides().to_vec();
        let ishape = index.shape().to_vec();
        let pairs: Vec<(usize, usize)> = index_positions(&ishape)
            .map(|(flat, coord)| {
                let dst = coord
                    .iter()
                    .enumerate()
                    .map(|(d, &c)| out_strides[d] * if d == dim { idx[flat] as usize } else { c })
                    .sum();
                let s = src.layout.offset() + coord.iter().zip(&src_strides).map(|(&c, &st)| c * st).sum::<usize>();
                (dst, s)
            })
            .collect();
        if add {
            self.check_float(op)?;
            let base = self.contiguous()?;
            let out = match (base.work(op)?, src.dtype()) {
                (Work::F32(b), _) => {
                    let sv = src.storage_f32();
                    let mut o = b.into_owned();
                    pairs.iter().for_each(|&(d, p)| o[d] += sv[p]);
                    WorkOut::F32(o)
                }
                (Work::F64(b), _) => {
                    let sv = f64::storage_slice(src.cpu_storage()).unwrap_or(&[]);
                    let mut o = b.into_owned();
                    pairs.iter().for_each(|&(d, p)| o[d] += sv[p]);
                    WorkOut::F64(o)
                }
            };
            return Ok(out.into_tensor(self.shape(), self.dtype()));
        }
        let base = self.contiguous()?;
        let off = base.layout.offset();
        let n = base.elem_count();
        let srcs = src.cpu_storage();
        let storage = map_storage_same!(base.cpu_storage(), v => {
            let sv = WithDType::storage_slice(srcs).unwrap_or(&[]);
            let mut o = v[off..off + n].to_vec();
            pairs.iter().for_each(|&(d, p)| o[d] = sv[p]);
            o
        });
        Ok(Tensor::from_storage(storage, self.shape()))
    }

    fn storage_f32(&self) -> &[f32] {
        match self.cpu_storage() {
            CpuStorage::F32(v) => v,
            _ => &[],
        }
    }

    /// Concatenates tensors along `dim`; all other dimensions, the dtype and the device must agree.
    pub fn concat(tensors: &[&Tensor], dim: usize) -> Result<Tensor> {
        crate::autograd::op(
            "concat",
            tensors,
            || Tensor::concat_fwd(tensors, dim),
            |_| crate::autograd::rules::concat(tensors, dim),
        )
    }

    fn concat_fwd(tensors: &[&Tensor], dim: usize) -> Result<Tensor> {
        const OP: &str = "concat";
        let first = *tensors
            .first()
            .ok_or_else(|| Error::InvalidArgument { op: OP, msg: "no tensors to concatenate".into() })?;
        first.layout.check_dim(OP, dim)?;
        for t in &tensors[1..] {
            first.check_same_dtype(OP, t)?;
            let same = t.rank() == first.rank()
                && t.shape().iter().zip(first.shape()).enumerate().all(|(d, (a, b))| d == dim || a == b);
            if !same {
                return Err(Error::ShapeMismatch { op: OP, lhs: first.shape().to_vec(), rhs: t.shape().to_vec() });
            }
        }
        let mut shape = first.shape().to_vec();
        shape[dim] = tensors.iter().map(|t| t.shape()[dim]).sum();
        crate::tensor::on_cuda!(first, crate::cuda::ops::concat(tensors, dim, &shape));
        let parts: Vec<Tensor> = tensors.iter().map(|t| t.contiguous()).collect::<Result<_>>()?;
        let (outer, _, inner) = split_at_dim(first.shape(), dim);
        let storage = map_storage_same!(first.cpu_storage(), _v => {
            let slices: Vec<&[_]> = parts.iter().map(|p| {
                let s = WithDType::storage_slice(p.cpu_storage()).unwrap_or(&[]);
                &s[p.layout.offset()..p.layout.offset() + p.elem_count()]
            }).collect();
            let mut out = Vec::with_capacity(shape.iter().product());
            for o in 0..outer {
                for (s, p) in slices.iter().zip(&parts) {
                    let run = p.shape()[dim] * inner;
                    out.extend_from_slice(&s[o * run..(o + 1) * run]);
                }
            }
            out
        });
        Ok(Tensor::from_storage(storage, &shape))
    }
}

impl Tensor {
    /// Writes `src` into `self[.., start..start + src.shape()[dim], ..]` along `dim`, in place.
    ///
    /// `src` must have `self`'s rank, dtype and device, and `self`'s size in every other dimension. The write
    /// touches only the target slice; if `self`'s storage is shared with another tensor it is copied first (copy on
    /// write), so no other tensor ever sees the change. This is the primitive behind preallocated KV caches: a
    /// cache keeps a capacity-sized buffer, writes new rows with `slice_assign` and hands out `narrow` views.
    /// On CUDA it is one copy kernel into the destination's buffer.
    pub fn slice_assign(&mut self, dim: usize, start: usize, src: &Tensor) -> Result<()> {
        const OP: &str = "slice_assign";
        if crate::autograd::tracking(&[self]) {
            return Err(Error::NotDifferentiable {
                op: OP,
                reason: "an in-place write into a tracked tensor would change a value the graph saved; write \
                         into an untracked buffer (a tracked source is copied as a constant)"
                    .into(),
            });
        }
        self.layout.check_dim(OP, dim)?;
        self.check_same_dtype(OP, src)?;
        self.check_same_device(OP, src)?;
        let fits = src.rank() == self.rank()
            && src.shape().iter().zip(self.shape()).enumerate().all(|(d, (a, b))| d == dim || a == b)
            && start.checked_add(src.shape()[dim]).is_some_and(|end| end <= self.shape()[dim]);
        if !fits {
            return Err(Error::InvalidArgument {
                op: OP,
                msg: format!("cannot write {:?} at {start} along dim {dim} of {:?}", src.shape(), self.shape()),
            });
        }
        #[cfg(feature = "cuda")]
        if self.cuda_storage().is_some() {
            return crate::cuda::ops::slice_assign(self, dim, start, src);
        }
        fn write<T: WithDType>(dst: &mut Tensor, dim: usize, start: usize, src: &Tensor) -> Result<()> {
            let src_view = src.as_ndarray::<T>()?;
            let mut view = dst.as_ndarray_mut::<T>()?;
            let n = src_view.shape()[dim];
            view.slice_axis_mut(ndarray::Axis(dim), ndarray::Slice::from(start..start + n)).assign(&src_view);
            Ok(())
        }
        match self.dtype() {
            DType::F16 => write::<half::f16>(self, dim, start, src),
            DType::BF16 => write::<half::bf16>(self, dim, start, src),
            DType::F32 => write::<f32>(self, dim, start, src),
            DType::F64 => write::<f64>(self, dim, start, src),
            DType::U8 => write::<u8>(self, dim, start, src),
            DType::U32 => write::<u32>(self, dim, start, src),
        }
    }
}

/// Row-major coordinates of every element of `shape`, with their flat index.
fn index_positions(shape: &[usize]) -> impl Iterator<Item = (usize, Vec<usize>)> + '_ {
    let n: usize = shape.iter().product();
    let mut coord = vec![0usize; shape.len()];
    (0..n).map(move |flat| {
        let cur = coord.clone();
        for d in (0..shape.len()).rev() {
            coord[d] += 1;
            if coord[d] < shape[d] {
                break;
            }
            coord[d] = 0;
        }
        (flat, cur)
    })
}
