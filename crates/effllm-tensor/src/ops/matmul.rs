//! Matrix products: batched GEMM through faer, and the parallel GEMV / skinny GEMM for decode.

use faer::linalg::matmul::matmul as faer_matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

use crate::cpu::gemv::{gemv_f32, gemv_f64, skinny_f32};
use crate::cpu::{CpuStorage, Real};
use crate::layout::{Layout, broadcast_shape, checked_elem_count};
use crate::tensor::WorkOut;
use crate::{DType, Error, Result, Tensor};

/// Largest number of activation rows that take the GEMV / skinny-GEMM path instead of faer.
pub const SKINNY_MAX_ROWS: usize = 8;

/// Operand of one batch: storage slice, offset, row stride, column stride.
#[derive(Clone, Copy)]
struct Operand<'a, R> {
    data: &'a [R],
    off: usize,
    rs: usize,
    cs: usize,
}

/// Plan of a batched product `[.., m, k] × [.., k, n]`.
struct Plan {
    batch_shape: Vec<usize>,
    m: usize,
    k: usize,
    n: usize,
    a_batch: Layout,
    b_batch: Layout,
}

fn plan(a: &Layout, b: &Layout) -> Result<Plan> {
    const OP: &str = "matmul";
    let (ra, rb) = (a.rank(), b.rank());
    if ra < 2 || rb < 2 {
        return Err(Error::BadShape {
            op: OP,
            shape: if ra < 2 { a.shape().to_vec() } else { b.shape().to_vec() },
            msg: "matmul needs rank >= 2 operands ([.., m, k] x [.., k, n])".into(),
        });
    }
    let (m, k) = (a.shape()[ra - 2], a.shape()[ra - 1]);
    let (k2, n) = (b.shape()[rb - 2], b.shape()[rb - 1]);
    if k != k2 {
        return Err(Error::ShapeMismatch { op: OP, lhs: a.shape().to_vec(), rhs: b.shape().to_vec() });
    }
    let batch_shape = broadcast_shape(OP, &a.shape()[..ra - 2], &b.shape()[..rb - 2])?;
    // Batch-only layouts (the matrix dims dropped), broadcast to the common batch shape.
    let drop2 =
        |l: &Layout| Layout::new(l.shape()[..l.rank() - 2].to_vec(), l.strides()[..l.rank() - 2].to_vec(), l.offset());
    let a_batch = drop2(a).broadcast_as(&batch_shape)?;
    let b_batch = drop2(b).broadcast_as(&batch_shape)?;
    Ok(Plan { batch_shape, m, k, n, a_batch, b_batch })
}

/// Rows and columns of C per task in a large product (see `batched`).
const GEMM_TILE_ROWS: usize = 512;
const GEMM_TILE_COLS: usize = 256;

/// The output buffer of one product, shared by the tasks that write its disjoint tiles.
#[derive(Clone, Copy)]
struct TileOut<R>(*mut R);
// SAFETY: the tasks of `batched` write disjoint tiles of the buffer, which outlives them (see its use).
unsafe impl<R: Send> Send for TileOut<R> {}
// SAFETY: as above.
unsafe impl<R: Send> Sync for TileOut<R> {}
impl<R> TileOut<R> {
    /// The pointer (a method, so that closures capture the whole `Sync` wrapper, not the raw field).
    fn ptr(self) -> *mut R {
        self.0
    }
}

/// One product `C = A·B` into a contiguous `m × n` output.
fn gemm_one<R: Real + faer::traits::ComplexField>(
    a: Operand<'_, R>,
    b: Operand<'_, R>,
    c: &mut [R],
    m: usize,
    k: usize,
    n: usize,
    par: Par,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        c.iter_mut().for_each(|v| *v = R::zero());
        return;
    }
    gemm_into(a, b, MatMut::from_row_major_slice_mut(c, m, n), k, par);
}

/// `C = A·B` for `A` of `c.nrows() × k` and `B` of `k × c.ncols()`, read in place by faer (k > 0).
fn gemm_into<R: Real + faer::traits::ComplexField>(
    a: Operand<'_, R>,
    b: Operand<'_, R>,
    c: MatMut<'_, R>,
    k: usize,
    par: Par,
) {
    let (m, n) = (c.nrows(), c.ncols());
    // SAFETY: (off + (rows-1)·rs + (cols-1)·cs) < data.len() holds for every view produced by `Layout`, which
    // only ever narrows a valid storage range (and for its tiles, which narrow it further); strides fit in isize
    // because the storage is a Vec.
    let (am, bm) = unsafe {
        (
            MatRef::<R>::from_raw_parts(a.data.as_ptr().add(a.off), m, k, a.rs as isize, a.cs as isize),
            MatRef::<R>::from_raw_parts(b.data.as_ptr().add(b.off), k, n, b.rs as isize, b.cs as isize),
        )
    };
    faer_matmul(c, Accum::Replace, am, bm, R::one(), par);
}

fn batched<R: Real + faer::traits::ComplexField>(
    a: &[R],
    la: &Layout,
    b: &[R],
    lb: &Layout,
    p: &Plan,
    gemv: impl Fn(Operand<'_, R>, Operand<'_, R>, &mut [R]) -> bool + Sync,
) -> Vec<R> {
    let (m, k, n) = (p.m, p.k, p.n);
    let (ra, rb) = (la.rank(), lb.rank());
    let (a_rs, a_cs) = (la.strides()[ra - 2], la.strides()[ra - 1]);
    let (b_rs, b_cs) = (lb.strides()[rb - 2], lb.strides()[rb - 1]);
    let a_offs: Vec<usize> = p.a_batch.offsets().collect();
    let b_offs: Vec<usize> = p.b_batch.offsets().collect();
    let batches = a_offs.len().max(if p.batch_shape.is_empty() { 1 } else { 0 });
    let (a_offs, b_offs) =
        if p.batch_shape.is_empty() { (vec![la.offset()], vec![lb.offset()]) } else { (a_offs, b_offs) };
    let len = batches * m * n;
    let one = |i: usize, c: &mut [R], par: Par| {
        let ao = Operand { data: a, off: a_offs[i], rs: a_rs, cs: a_cs };
        let bo = Operand { data: b, off: b_offs[i], rs: b_rs, cs: b_cs };
        if !gemv(ao, bo, c) {
            gemm_one(ao, bo, c, m, k, n, par);
        }
    };
    // Saturating: only compared with thresholds (k may be a broadcast dim of any size).
    let flops = m.saturating_mul(n).saturating_mul(k);
    let (tiles_m, tiles_n) = (m.div_ceil(GEMM_TILE_ROWS), n.div_ceil(GEMM_TILE_COLS));
    crate::threads::install(|| {
        // At most SKINNY_MAX_ROWS rows take `one` (the GEMV path where it applies) however large the product.
        if m > SKINNY_MAX_ROWS && flops >= (1 << 24) && tiles_m * tiles_n >= 2 {
            // Large products: C in fixed tiles of 512 rows × 256 columns, one sequential faer GEMM per tile, the
            // tiles spread over the pool. Each call then packs only its 256 columns of B, which stay in L2,
            // where faer's own split (or whole row blocks) packs all of B per task. On the 2-core Xeon slice,
            // interleaved runs at n = 1024: 339-371 GFLOP/s against 307-342 for row blocks of 256 (the
            // previous split, itself 4-11 points above faer's) and 293-299 for faer's parallel split
            // (`docs/benchmarks.md`). The tiles do not depend on the thread count, so neither do the results.
            //
            // The output is allocated uninitialised and each task zeroes its own tile just before its GEMM.
            // `vec![0; len]` is calloc: when it reuses freed memory (the usual case in a loop) one thread memsets
            // all of C (4 MiB at n = 1024) before the tiles overwrite it, and when the memory is fresh the tiles
            // take its page faults. Zeroing per tile runs in parallel and leaves the tile in cache for faer's
            // stores (1-2 points of the FMA ceiling in interleaved runs at n = 1024). faer's `Accum::Replace`
            // never needs the zeros, but they keep every element initialised whatever path faer takes inside.
            let mut out: Vec<R> = Vec::with_capacity(len);
            for i in 0..batches {
                // SAFETY: i·m·n + m·n <= len <= the capacity (len = batches·m·n fits usize: `matmul_fwd` checked
                // the output's element count).
                let base = TileOut(unsafe { out.as_mut_ptr().add(i * m * n) });
                (0..tiles_m * tiles_n).into_par_iter().for_each(|t| {
                    let (r0, c0) = ((t / tiles_n) * GEMM_TILE_ROWS, (t % tiles_n) * GEMM_TILE_COLS);
                    let (rows, cols) = (GEMM_TILE_ROWS.min(m - r0), GEMM_TILE_COLS.min(n - c0));
                    let ao = Operand { data: a, off: a_offs[i] + r0 * a_rs, rs: a_rs, cs: a_cs };
                    let bo = Operand { data: b, off: b_offs[i] + c0 * b_cs, rs: b_rs, cs: b_cs };
                    // SAFETY: the rows × cols tile at (r0, c0) of batch i's m × n row-major block of `out`'s
                    // allocation, which outlives this loop; the tasks' tiles are disjoint, so no two touch the same
                    // element. Each row of the tile is written (zeroed) before faer sees it.
                    let cm = unsafe {
                        let tile = base.ptr().add(r0 * n + c0);
                        for r in 0..rows {
                            std::slice::from_raw_parts_mut(tile.add(r * n).cast::<std::mem::MaybeUninit<R>>(), cols)
                                .fill(std::mem::MaybeUninit::new(R::zero()));
                        }
                        MatMut::from_raw_parts_mut(tile, rows, cols, n as isize, 1)
                    };
                    gemm_into(ao, bo, cm, k, Par::Seq);
                });
            }
            // SAFETY: the tiles of every batch cover all len elements, and each was written above.
            unsafe { out.set_len(len) };
            return out;
        }
        let mut out = vec![R::zero(); len];
        if batches > 1 && m * n > 0 && flops < (1 << 22) {
            // Many small products: parallel over batches, each sequential.
            out.par_chunks_mut(m * n).enumerate().for_each(|(i, c)| one(i, c, Par::Seq));
        } else if m * n > 0 {
            let par = if flops < (1 << 16) { Par::Seq } else { Par::rayon(0) };
            out.chunks_mut(m * n).enumerate().for_each(|(i, c)| one(i, c, par));
        }
        out
    })
}

/// The decode fast path for f32: `A` has at most [`SKINNY_MAX_ROWS`] rows with unit column stride, and `B` is a
/// transposed row-major weight (unit row stride), i.e. `A·Wᵀ` with `W` `[n, k]` row-major.
fn gemv_path_f32(a: Operand<'_, f32>, b: Operand<'_, f32>, c: &mut [f32], m: usize, k: usize, n: usize) -> bool {
    if m == 0 || m > SKINNY_MAX_ROWS || k == 0 || n == 0 || b.rs != 1 || (a.cs != 1 && k > 1) {
        return false;
    }
    let ldw = if n == 1 { k } else { b.cs };
    let w = &b.data[b.off..];
    if m == 1 {
        gemv_f32(w, ldw, &a.data[a.off..a.off + k], c);
    } else {
        let x: Vec<f32> = (0..m).flat_map(|i| a.data[a.off + i * a.rs..a.off + i * a.rs + k].iter().copied()).collect();
        skinny_f32(w, ldw, &x, m, k, c, n);
    }
    true
}

fn gemv_path_f64(a: Operand<'_, f64>, b: Operand<'_, f64>, c: &mut [f64], m: usize, k: usize, n: usize) -> bool {
    if m != 1 || k == 0 || n == 0 || b.rs != 1 || (a.cs != 1 && k > 1) {
        return false;
    }
    let ldw = if n == 1 { k } else { b.cs };
    gemv_f64(&b.data[b.off..], ldw, &a.data[a.off..a.off + k], c);
    true
}

impl Tensor {
    /// Batched matrix product `[.., m, k] × [.., k, n] → [.., m, n]` with numpy broadcasting of the batch dims.
    ///
    /// Operands may be any strided views (transposes included) and are read in place by faer. f16/bf16 are
    /// computed in f32. A left operand of at most [`SKINNY_MAX_ROWS`] rows times a transposed row-major matrix
    /// (`x · Wᵀ`, the decode case) takes the parallel GEMV path.
    pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        crate::autograd::op(
            "matmul",
            &[self, rhs],
            || self.matmul_fwd(rhs),
            |_| crate::autograd::rules::matmul(self, rhs),
        )
    }

    fn matmul_fwd(&self, rhs: &Tensor) -> Result<Tensor> {
        const OP: &str = "matmul";
        self.check_same_dtype(OP, rhs)?;
        self.check_float(OP)?;
        let p = plan(&self.layout, &rhs.layout)?;
        let (m, k, n) = (p.m, p.k, p.n);
        let mut shape = p.batch_shape.clone();
        shape.extend([m, n]);
        // The kernels size the output and its tiles by this count (operands can be broadcast views of any shape).
        checked_elem_count(OP, &shape)?;
        crate::tensor::on_cuda!(self, crate::cuda::ops::matmul(self, rhs, &p.batch_shape, m, k, n));
        let out = match (self.cpu_storage(), rhs.cpu_storage()) {
            (CpuStorage::F32(a), CpuStorage::F32(b)) => {
                WorkOut::F32(batched(a, &self.layout, b, &rhs.layout, &p, |a, b, c| gemv_path_f32(a, b, c, m, k, n)))
            }
            (CpuStorage::F64(a), CpuStorage::F64(b)) => {
                WorkOut::F64(batched(a, &self.layout, b, &rhs.layout, &p, |a, b, c| gemv_path_f64(a, b, c, m, k, n)))
            }
            _ => {
                let a = self.to_dtype(DType::F32)?;
                let b = rhs.to_dtype(DType::F32)?;
                let c = a.matmul(&b)?;
                return c.to_dtype(self.dtype());
            }
        };
        Ok(out.into_tensor(&shape, self.dtype()))
    }

    /// `self · wᵀ` for a weight `w` = `[n, k]` (PyTorch's `F.linear` without bias): `[.., k] → [.., n]`.
    ///
    /// With at most [`SKINNY_MAX_ROWS`] rows of activations this is the parallel GEMV / skinny GEMM that reads each
    /// weight row once; larger inputs go to faer's GEMM.
    pub fn linear(&self, w: &Tensor) -> Result<Tensor> {
        const OP: &str = "linear";
        if w.rank() != 2 || self.rank() == 0 {
            return Err(Error::ShapeMismatch { op: OP, lhs: self.shape().to_vec(), rhs: w.shape().to_vec() });
        }
        let k = self.shape()[self.rank() - 1];
        if w.shape()[1] != k {
            return Err(Error::ShapeMismatch { op: OP, lhs: self.shape().to_vec(), rhs: w.shape().to_vec() });
        }
        let rows = self.elem_count() / k.max(1);
        let mut shape = self.shape().to_vec();
        let last = shape.len() - 1;
        shape[last] = w.shape()[0];
        // Its own backward rule: the weight's gradient comes out in `w`'s `[n, k]` layout (as the transpose of
        // ∂(wᵀ) it needed a strided copy per weight and step).
        crate::autograd::op(
            OP,
            &[self, w],
            || self.reshape(&[rows, k])?.matmul(&w.t()?)?.reshape(&shape),
            |_| crate::autograd::rules::linear(self, w),
        )
    }

    /// The mixed-precision linear of training: `self · wᵀ` for an f32 `self` and an f16/bf16 weight `w` = `[n, k]`,
    /// with `self` rounded to `w`'s dtype, the products accumulated in f32 and the result left in f32:
    ///
    /// `y = round₁₆(x) · wᵀ` (f32 accumulation, no rounding of `y`).
    ///
    /// It is `x.to_dtype(w.dtype())?.linear(w)?.to_dtype(F32)` minus the last rounding and minus two casts (the output's
    /// forward, the input gradient's backward): the backward computes `∂x = round₁₆(∂y) · w` straight into f32 and
    /// `∂w = round₁₆(∂y)ᵀ · round₁₆(x)` in `w`'s dtype. For `w` of `self`'s dtype it is [`Tensor::linear`].
    pub fn linear_mixed(&self, w: &Tensor) -> Result<Tensor> {
        const OP: &str = "linear_mixed";
        if w.dtype() == self.dtype() {
            return self.linear(w);
        }
        if self.dtype() != DType::F32 || !matches!(w.dtype(), DType::F16 | DType::BF16) {
            return Err(Error::DTypeMismatch { op: OP, lhs: self.dtype(), rhs: w.dtype() });
        }
        if w.rank() != 2 || self.rank() == 0 || w.shape()[1] != self.shape()[self.rank() - 1] {
            return Err(Error::ShapeMismatch { op: OP, lhs: self.shape().to_vec(), rhs: w.shape().to_vec() });
        }
        self.check_same_device(OP, w)?;
        let k = w.shape()[1];
        let rows = self.elem_count() / k.max(1);
        let mut shape = self.shape().to_vec();
        let last = shape.len() - 1;
        shape[last] = w.shape()[0];
        // The rounded input is what the backward's ∂w needs: kept instead of the f32 input (half the bytes).
        let x16 = crate::autograd::no_grad(|| self.to_dtype(w.dtype()))?.reshape(&[rows, k])?;
        crate::autograd::op(
            OP,
            &[self, w],
            || x16.matmul_wide(&w.t()?)?.reshape(&shape),
            |_| crate::autograd::rules::linear_mixed(self.shape(), &x16, w),
        )
    }

    /// `[m, k] × [k, n]` of 16-bit operands with the f32 accumulator as the result (no 16-bit rounding); f32/f64
    /// operands give [`Tensor::matmul`]'s result. Not differentiable (the building block of `linear_mixed`).
    pub(crate) fn matmul_wide(&self, rhs: &Tensor) -> Result<Tensor> {
        const OP: &str = "matmul_wide";
        self.check_same_dtype(OP, rhs)?;
        if !matches!(self.dtype(), DType::F16 | DType::BF16) {
            return self.matmul_fwd(rhs);
        }
        #[cfg(feature = "cuda")]
        if self.cuda_storage().is_some() {
            let p = plan(&self.layout, &rhs.layout)?;
            return crate::cuda::ops::matmul_to(self, rhs, &p.batch_shape, p.m, p.k, p.n, DType::F32);
        }
        // On the CPU 16-bit operands are computed in f32 anyway: widen them exactly and skip the final rounding.
        self.to_dtype(DType::F32)?.matmul_fwd(&rhs.to_dtype(DType::F32)?)
    }
}
