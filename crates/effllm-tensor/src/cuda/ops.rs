//! Tensor ops on CUDA storage: kernel launches and cuBLAS calls. Entry points are called from the `Tensor` ops
//! after their shape/dtype/device checks, so everything here may assume valid operands.

use std::sync::Arc;

use cudarc::cublas::sys::cublasOperation_t;
use cudarc::driver::{CudaView, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};

use super::LaunchMode;
use super::backend::{CudaDevice, CudaStorage, KLayout, dtype_id, grid, launch_err, launch_with_attribute, rows_grid};
use super::kernels;
use crate::cpu::CpuStorage;
use crate::layout::Layout;
use crate::tensor::Storage;
use crate::{DType, Error, Result, Tensor};

impl Tensor {
    pub(crate) fn cuda_storage(&self) -> Option<&CudaStorage> {
        match &*self.storage {
            Storage::Cuda(s) => Some(s),
            Storage::Cpu(_) => None,
        }
    }

    pub(crate) fn from_cuda(s: CudaStorage, shape: &[usize]) -> Tensor {
        Tensor { storage: Storage::Cuda(s).counted(), layout: Layout::contiguous(shape), node: None }
    }
}

fn storage(t: &Tensor) -> &CudaStorage {
    t.cuda_storage().expect("cuda op called on a CUDA tensor")
}

/// Device view of the elements from the tensor's offset on.
fn view(t: &Tensor) -> CudaView<'_, u8> {
    let s = storage(t);
    s.buf.slice(t.layout.offset() * s.dtype.size_in_bytes()..)
}

/// A contiguous copy of `t` converted to `dtype` (one strided-cast kernel).
pub(crate) fn cast(t: &Tensor, dtype: DType) -> Result<Tensor> {
    Ok(Tensor::from_cuda(cast_storage(t, dtype)?, t.shape()))
}

/// [`cast`]'s buffer: always a fresh allocation (also when `t` is contiguous and already `dtype`), so a kernel may
/// write into it in place.
fn cast_storage(t: &Tensor, dtype: DType) -> Result<CudaStorage> {
    let s = storage(t);
    let dev = Arc::clone(&s.dev);
    let n = t.elem_count();
    let mut out = dev.alloc(dtype, n)?;
    let off_bytes = t.layout.offset() * s.dtype.size_in_bytes();
    let bf16_pair = matches!((s.dtype, dtype), (DType::F32, DType::BF16) | (DType::BF16, DType::F32));
    if n > 0 && n.is_multiple_of(4) && t.is_contiguous() && bf16_pair && off_bytes.is_multiple_of(16) {
        // Mixed-precision training's casts: four elements per thread (the buffers' bases are 256-byte aligned, the
        // source's offset is checked above).
        let name = if s.dtype == DType::F32 { "cast_f32_bf16_x4" } else { "cast_bf16_f32_x4" };
        let f = dev.builtin("cast", kernels::CAST, name)?;
        let src = view(t);
        let n4 = (n / 4) as i64;
        let mut b = dev.stream.launch_builder(&f);
        b.arg(&src).arg(&mut out.buf).arg(&n4);
        // SAFETY: `n` contiguous source elements from a 16-byte-aligned offset; `out` holds `n` elements.
        unsafe { b.launch(grid(n / 4)) }.map_err(launch_err)?;
    } else if n > 0 && t.is_contiguous() {
        let f = dev.builtin("cast", kernels::CAST, "cast_dense")?;
        let (sdt, ddt, nn, off) = (dtype_id(s.dtype), dtype_id(dtype), n as i64, t.layout.offset() as i64);
        let mut b = dev.stream.launch_builder(&f);
        b.arg(&s.buf).arg(&sdt).arg(&off).arg(&mut out.buf).arg(&ddt).arg(&nn);
        // SAFETY: a contiguous tensor's `n` elements from `off` lie inside `s.buf`; `out` holds `n` elements.
        unsafe { b.launch(grid(n)) }.map_err(launch_err)?;
    } else if n > 0 && s.dtype == dtype && vec4_strided(&t.layout, dtype) {
        let f = dev.builtin("cast", kernels::CAST, "copy_strided_x4")?;
        let lay = KLayout::new("cast", &t.layout)?;
        let (n4, es) = ((n / 4) as i64, dtype.size_in_bytes() as i32);
        let mut b = dev.stream.launch_builder(&f);
        b.arg(&s.buf).arg(&lay).arg(&mut out.buf).arg(&n4).arg(&es);
        // SAFETY: the layout addresses elements inside `s.buf` (checked by `Layout`) and groups of four along its
        // contiguous last dimension start at multiples of four elements (checked by `vec4_strided`); `out` holds `n`.
        unsafe { b.launch(grid(n / 4)) }.map_err(launch_err)?;
    } else if n > 0 {
        let f = dev.builtin("cast", kernels::CAST, "cast_strided")?;
        let lay = KLayout::new("cast", &t.layout)?;
        let (sdt, ddt, nn) = (dtype_id(s.dtype), dtype_id(dtype), n as i64);
        let mut b = dev.stream.launch_builder(&f);
        b.arg(&s.buf).arg(&sdt).arg(&lay).arg(&mut out.buf).arg(&ddt).arg(&nn);
        // SAFETY: the layout addresses elements inside `s.buf` (checked by `Layout`), `out` holds `n` elements.
        unsafe { b.launch(grid(n)) }.map_err(launch_err)?;
    }
    Ok(out)
}

/// Whether a strided copy of `l` can move four elements at a time (`copy_strided_x4`): 2- or 4-byte elements, a
/// contiguous last dimension whose length is a multiple of 4, and the offset and every other stride multiples of 4
/// (so each group of four is one aligned 8- or 16-byte access).
fn vec4_strided(l: &Layout, dtype: DType) -> bool {
    let r = l.rank();
    r >= 2
        && matches!(dtype.size_in_bytes(), 2 | 4)
        && l.strides()[r - 1] == 1
        && l.shape()[r - 1].is_multiple_of(4)
        && l.offset().is_multiple_of(4)
        && l.shape()[..r - 1].iter().zip(&l.strides()[..r - 1]).all(|(&d, &st)| d == 1 || st.is_multiple_of(4))
}

/// `t` as a contiguous f32 (for f16/bf16/f32) or f64 tensor: the precision kernels compute in.
pub(crate) fn work(t: &Tensor) -> Result<Tensor> {
    let wd = if t.dtype() == DType::F64 { DType::F64 } else { DType::F32 };
    if t.dtype() == wd && t.is_contiguous() { Ok(t.clone()) } else { cast(t, wd) }
}

/// Converts a work-precision result back to the caller's dtype.
fn finish(out: Tensor, dtype: DType) -> Result<Tensor> {
    if out.dtype() == dtype { Ok(out) } else { cast(&out, dtype) }
}

fn suffix(d: DType) -> &'static str {
    if d == DType::F64 { "f64" } else { "f32" }
}

/// Elementwise unary op `op` (ids as in the kernel source) with parameters.
pub(crate) fn unary(t: &Tensor, op: i32, p0: f64, p1: f64) -> Result<Tensor> {
    let w = work(t)?;
    let s = storage(&w);
    let dev = Arc::clone(&s.dev);
    let n = w.elem_count();
    let mut out = dev.alloc(w.dtype(), n)?;
    if n > 0 {
        let f = dev.builtin("unary", kernels::UNARY, &format!("unary_{}", suffix(w.dtype())))?;
        let (nn, x) = (n as i64, view(&w));
        let mut b = dev.stream.launch_builder(&f);
        b.arg(&x).arg(&mut out.buf).arg(&nn).arg(&op);
        let (p0f, p1f) = (p0 as f32, p1 as f32);
        if w.dtype() == DType::F64 {
            b.arg(&p0).arg(&p1);
        } else {
            b.arg(&p0f).arg(&p1f);
        }
        // The f32 kernel handles four elements per thread (16-byte accesses; grid-stride otherwise).
        let threads = if w.dtype() == DType::F32 { n.div_ceil(4) } else { n };
        // SAFETY: input and output hold `n` contiguous elements of the work dtype.
        unsafe { b.launch(grid(threads)) }.map_err(launch_err)?;
    }
    finish(Tensor::from_cuda(out, t.shape()), t.dtype())
}

/// `silu(g) · u` elementwise (same shapes).
pub(crate) fn swiglu(g: &Tensor, u: &Tensor) -> Result<Tensor> {
    let (gw, uw) = (work(g)?, work(u)?);
    let dev = Arc::clone(&storage(&gw).dev);
    let n = gw.elem_count();
    let mut out = dev.alloc(gw.dtype(), n)?;
    if n > 0 {
        let f = dev.builtin("unary", kernels::UNARY, &format!("swiglu_{}", suffix(gw.dtype())))?;
        let (nn, gv, uv) = (n as i64, view(&gw), view(&uw));
        let mut b = dev.stream.launch_builder(&f);
        b.arg(&gv).arg(&uv).arg(&mut out.buf).arg(&nn);
        // The f32 kernel handles four elements per thread (16-byte accesses; grid-stride otherwise).
        let threads = if gw.dtype() == DType::F32 { n.div_ceil(4) } else { n };
        // SAFETY: three buffers of `n` contiguous elements.
        unsafe { b.launch(grid(threads)) }.map_err(launch_err)?;
    }
    finish(Tensor::from_cuda(out, g.shape()), g.dtype())
}

/// Broadcasting binary op on operands already broadcast to `shape` (layouts may have zero strides).
pub(crate) fn binary(a: &Tensor, b: &Tensor, shape: &[usize], op: i32) -> Result<Tensor> {
    // Half inputs are widened once; f32/f64 operands are read in place through their (broadcast) layouts.
    let (aw, bw) = if a.dtype().is_float() && matches!(a.dtype(), DType::F32 | DType::F64) {
        (a.clone(), b.clone())
    } else {
        (work(a)?, work(b)?)
    };
    let sa = storage(&aw);
    let dev = Arc::clone(&sa.dev);
    let n: usize = shape.iter().product();
    let mut out = dev.alloc(aw.dtype(), n)?;
    if n > 0 && aw.is_contiguous() && bw.is_contiguous() && aw.shape() == shape && bw.shape() == shape {
        let f = dev.builtin("binary", kernels::BINARY, &format!("binary_dense_{}", suffix(aw.dtype())))?;
        let (nn, av, bv) = (n as i64, view(&aw), view(&bw));
        let mut l = dev.stream.launch_builder(&f);
        l.arg(&av).arg(&bv).arg(&mut out.buf).arg(&nn).arg(&op);
        // The f32 kernel handles four elements per thread (16-byte accesses; grid-stride otherwise).
        let threads = if aw.dtype() == DType::F32 { n.div_ceil(4) } else { n };
        // SAFETY: three dense buffers of `n` elements.
        unsafe { l.launch(grid(threads)) }.map_err(launch_err)?;
    } else if n > 0 {
        let la = KLayout::new("binary", &aw.layout.broadcast_as(shape)?)?;
        let lb = KLayout::new("binary", &bw.layout.broadcast_as(shape)?)?;
        let f = dev.builtin("binary", kernels::BINARY, &format!("binary_{}", suffix(aw.dtype())))?;
        let nn = n as i64;
        let mut l = dev.stream.launch_builder(&f);
        l.arg(&sa.buf).arg(&la).arg(&storage(&bw).buf).arg(&lb).arg(&mut out.buf).arg(&nn).arg(&op);
        // SAFETY: layouts address elements inside their buffers; the output holds `n` elements.
        unsafe { l.launch(grid(n)) }.map_err(launch_err)?;
    }
    finish(Tensor::from_cuda(out, shape), a.dtype())
}

/// Moves `dim` last (a contiguous copy when it is not already last) and returns `(rows, n)`.
fn rows_view(t: &Tensor, dim: usize) -> Result<(Tensor, usize, usize)> {
    let last = t.rank() - 1;
    let moved = if dim == last { t.clone() } else { t.transpose(dim, last)? };
    let w = work(&moved)?;
    let n = t.shape()[dim];
    let rows = t.elem_count().checked_div(n).unwrap_or(0);
    Ok((w, rows, n))
}

/// Softmax or log-softmax along `dim`.
pub(crate) fn softmax(t: &Tensor, dim: usize, log: bool) -> Result<Tensor> {
    let (w, rows, n) = rows_view(t, dim)?;
    let dev = Arc::clone(&storage(&w).dev);
    let mut out = dev.alloc(w.dtype(), rows * n)?;
    if rows * n > 0 {
        let f = dev.builtin("rows", kernels::ROWS, &format!("softmax_{}", suffix(w.dtype())))?;
        let (nn, lg, x) = (n as i64, i32::from(log), view(&w));
        let mut b = dev.stream.launch_builder(&f);
        b.arg(&x).arg(&mut out.buf).arg(&nn).arg(&lg);
        // f32: 512 threads while a row fits that block's register cache (16384 values), 1024 beyond (see the
        // kernel); f64 keeps the general 256-thread body.
        let cfg = if w.dtype() == DType::F32 {
            let threads = if n <= 16_384 { 512 } else { 1024 };
            cudarc::driver::LaunchConfig { block_dim: (threads, 1, 1), ..rows_grid(rows) }
        } else {
            rows_grid(rows)
        };
        // SAFETY: `rows` rows of `n` contiguous elements in and out.
        unsafe { b.launch(cfg) }.map_err(launch_err)?;
    }
    let last = t.rank() - 1;
    let mut moved_shape = t.shape().to_vec();
    moved_shape.swap(dim, last);
    let y = Tensor::from_cuda(out, &moved_shape);
    let y = if dim == last { y } else { cast(&y.transpose(dim, last)?, y.dtype())? };
    finish(y, t.dtype())
}

/// RMSNorm (`bias = None`, `rms = true`) or LayerNorm over the last dimension.
pub(crate) fn norm(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, eps: f64, rms: bool) -> Result<Tensor> {
    let d = x.shape()[x.rank() - 1];
    let rows = x.elem_count().checked_div(d).unwrap_or(0);
    let (xw, ww) = (work(x)?, work(w)?);
    let bw = bias.map(work).transpose()?;
    let dev = Arc::clone(&storage(&xw).dev);
    let mut out = dev.alloc(xw.dtype(), rows * d)?;
    if rows * d > 0 && rms && xw.dtype() == DType::F32 && d <= WARP_ROW_MAX {
        // Model widths: one warp per row (see `rms_norm_warp_f32`).
        let f = dev.builtin("rows", kernels::ROWS, "rms_norm_warp_f32")?;
        let (rr, dd, xv, wv) = (rows as i64, d as i64, view(&xw), view(&ww));
        let mut b = dev.stream.launch_builder(&f);
        b.arg(&xv).arg(&wv).arg(&mut out.buf).arg(&rr).arg(&dd).arg(&eps);
        // SAFETY: `rows` rows of `d` elements, weights of `d` elements.
        unsafe { b.launch(warp_rows_grid(rows)) }.map_err(launch_err)?;
    } else if rows * d > 0 {
        let sfx = suffix(xw.dtype());
        let name = if rms { format!("rms_norm_{sfx}") } else { format!("layer_norm_{sfx}") };
        let f = dev.builtin("rows", kernels::ROWS, &name)?;
        let (dd, xv, wv) = (d as i64, view(&xw), view(&ww));
        let null: u64 = 0;
        let bv = bw.as_ref().map(view);
        let mut b = dev.stream.launch_builder(&f);
        b.arg(&xv).arg(&wv);
        if !rms {
            match &bv {
                Some(v) => b.arg(v),
                None => b.arg(&null),
            };
        }
        b.arg(&mut out.buf).arg(&dd).arg(&eps);
        // SAFETY: `rows` rows of `d` elements, weights (and bias) of `d` elements; a null bias is checked in-kernel.
        unsafe { b.launch(rows_grid(rows)) }.map_err(launch_err)?;
    }
    finish(Tensor::from_cuda(out, x.shape()), x.dtype())
}

/// Reduction `op` (0 sum, 1 mean, 2 max, 3 min, 4 logsumexp) over `dim`; returns the keepdim shape.
pub(crate) fn reduce(t: &Tensor, dim: usize, op: i32) -> Result<Tensor> {
    let w = work(t)?;
    let (outer, n, inner) = crate::ops::reduce::split_at_dim(t.shape(), dim);
    let dev = Arc::clone(&storage(&w).dev);
    let count = outer * inner;
    // Sums and means of a few long contiguous rows: partial sums over many blocks, then a second pass.
    if (op == 0 || op == 1) && inner == 1 && count > 0 && count < 1024 && n >= 1 << 15 {
        let parts = (n / 8192).clamp(2, 1024);
        let mut partial = dev.alloc(DType::F64, count * parts)?;
        let f = dev.builtin("rows", kernels::ROWS, &format!("partial_sum_{}", suffix(w.dtype())))?;
        let (nn, pp, x) = (n as i64, parts as i64, view(&w));
        let mut b = dev.stream.launch_builder(&f);
        b.arg(&x).arg(&mut partial.buf).arg(&nn).arg(&pp);
        // SAFETY: `count` contiguous rows of `n` inputs, `count·parts` f64 partials.
        unsafe { b.launch(rows_grid(count * parts)) }.map_err(launch_err)?;
        let sums = reduce(&Tensor::from_cuda(partial, &[count, parts]), 1, 0)?;
        let r = if op == 1 { sums.affine(1.0 / n as f64, 0.0)? } else { sums };
        let mut shape = t.shape().to_vec();
        shape[dim] = 1;
        return finish(r.reshape(&shape)?, t.dtype());
    }
    let mut out = dev.alloc(w.dtype(), count)?;
    if count > 0 {
        let f = dev.builtin("rows", kernels::ROWS, &format!("reduce_{}", suffix(w.dtype())))?;
        let (nn, ii, x) = (n as i64, inner as i64, view(&w));
        let mut b = dev.stream.launch_builder(&f);
        b.arg(&x).arg(&mut out.buf).arg(&nn).arg(&ii).arg(&op);
        // SAFETY: `outer·n·inner` contiguous inputs, `outer·inner` outputs.
        unsafe { b.launch(rows_grid(count)) }.map_err(launch_err)?;
    }
    let mut shape = t.shape().to_vec();
    shape[dim] = 1;
    finish(Tensor::from_cuda(out, &shape), t.dtype())
}

/// Random fill: `kind` 0 uniform f32, 1 uniform f64, 2 normal (f64 values, `mean + std·z`).
pub(crate) fn rng_fill(
    dev: &Arc<CudaDevice>,
    shape: &[usize],
    rng: &crate::rng::CounterRng,
    offset: u64,
    kind: i32,
    mean: f64,
    std: f64,
) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let dtype = if kind == 0 { DType::F32 } else { DType::F64 };
    let mut out = dev.alloc(dtype, n)?;
    if n > 0 {
        let f = dev.builtin("rng", kernels::RNG, "rng_fill")?;
        let (nn, seed, stream) = (n as i64, rng.seed(), rng.stream());
        let mut b = dev.stream.launch_builder(&f);
        b.arg(&mut out.buf).arg(&nn).arg(&seed).arg(&stream).arg(&offset).arg(&kind).arg(&mean).arg(&std);
        // SAFETY: `n` outputs of the written type.
        unsafe { b.launch(grid(n)) }.map_err(launch_err)?;
    }
    Ok(Tensor::from_cuda(out, shape))
}

/// How one operand reaches cuBLAS without a copy: pointer offset (elements), transpose flag, leading dimension and
/// batch stride; `None` when its layout needs a copy first.
fn gemm_operand(l: &Layout, batch: usize) -> Option<(usize, bool, usize, usize)> {
    let r = l.rank();
    let (rows, cols) = (l.shape()[r - 2], l.shape()[r - 1]);
    let (rs, cs) = (l.strides()[r - 2], l.strides()[r - 1]);
    let (trans, ld) = if (cs == 1 || cols == 1) && rs >= cols.max(1) {
        (false, rs.max(cols).max(1))
    } else if (rs == 1 || rows == 1) && cs >= rows.max(1) {
        (true, cs.max(rows).max(1))
    } else {
        return None;
    };
    // The batch dims must collapse into one stride (0 when broadcast).
    let dims: Vec<(usize, usize)> =
        l.shape()[..r - 2].iter().zip(&l.strides()[..r - 2]).filter(|(d, _)| **d > 1).map(|(&d, &s)| (d, s)).collect();
    let stride = match dims.as_slice() {
        [] => 0,
        [(_, s)] => *s,
        many => {
            let inner = many[many.len() - 1].1;
            let mut expect = inner;
            for w in many.iter().rev() {
                if w.1 != expect {
                    return None;
                }
                expect *= w.0;
            }
            inner
        }
    };
    if batch > 1 && stride == 0 && !dims.is_empty() {
        return None;
    }
    Some((l.offset(), trans, ld, stride))
}

static ALLOW_TF32: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Lets f32 matmuls use TF32 tensor cores (10-bit mantissa products, f32 accumulation): about 3e-4 relative error
/// instead of f32's 1e-6. Off by default.
pub fn set_allow_tf32(allow: bool) {
    ALLOW_TF32.store(allow, std::sync::atomic::Ordering::Relaxed);
}

/// Batched matmul through `cublasGemmStridedBatchedEx`, row-major via `Cᵀ = Bᵀ·Aᵀ`. Operands are read in place when
/// their layout allows it (row-major or transposed, uniform or broadcast batch stride) and copied otherwise.
/// f32 computes in f32 (TF32 when allowed), f16/bf16 store 16-bit and accumulate in f32, f64 in f64.
pub(crate) fn matmul(a: &Tensor, b: &Tensor, batch_shape: &[usize], m: usize, k: usize, n: usize) -> Result<Tensor> {
    matmul_to(a, b, batch_shape, m, k, n, a.dtype())
}

/// [`matmul`] with the result in `out_dtype`: the operands' dtype, or f32 for f16/bf16 operands (cuBLAS keeps its
/// f32 accumulator: no 16-bit rounding of the result).
pub(crate) fn matmul_to(
    a: &Tensor,
    b: &Tensor,
    batch_shape: &[usize],
    m: usize,
    k: usize,
    n: usize,
    out_dtype: DType,
) -> Result<Tensor> {
    use cudarc::cublas::sys::{cublasComputeType_t as C, cublasGemmAlgo_t, cudaDataType as D};
    use cudarc::driver::{DevicePtr, DevicePtrMut};
    let batch: usize = batch_shape.iter().product();
    let dtype = a.dtype();
    let wide_out = out_dtype != dtype;
    if wide_out && !(out_dtype == DType::F32 && matches!(dtype, DType::F16 | DType::BF16)) {
        return Err(Error::DTypeMismatch { op: "matmul", lhs: dtype, rhs: out_dtype });
    }
    let mut ash = batch_shape.to_vec();
    ash.extend([m, k]);
    let mut bsh = batch_shape.to_vec();
    bsh.extend([k, n]);
    let prep = |t: &Tensor, shape: &[usize]| -> Result<(Tensor, (usize, bool, usize, usize))> {
        let v = t.broadcast_as(shape)?;
        if let Some(p) = gemm_operand(&v.layout, batch) {
            return Ok((v, p));
        }
        let c = cast(&v, dtype)?;
        let p = gemm_operand(&c.layout, batch).expect("a contiguous operand is always usable");
        Ok((c, p))
    };
    let (aw, (a_off, a_t, lda, a_bs)) = prep(a, &ash)?;
    let (bw, (b_off, b_t, ldb, b_bs)) = prep(b, &bsh)?;
    let dev = Arc::clone(&storage(&aw).dev);
    let mut out = dev.alloc(out_dtype, batch * m * n)?;
    let mut shape = batch_shape.to_vec();
    shape.extend([m, n]);
    if batch * m * n == 0 {
        return Ok(Tensor::from_cuda(out, &shape));
    }
    if k == 0 {
        dev.stream.memset_zeros(&mut out.buf).map_err(launch_err)?;
        return Ok(Tensor::from_cuda(out, &shape));
    }
    let (data_type, compute) = match dtype {
        DType::F64 => (D::CUDA_R_64F, C::CUBLAS_COMPUTE_64F),
        DType::F16 => (D::CUDA_R_16F, C::CUBLAS_COMPUTE_32F),
        DType::BF16 => (D::CUDA_R_16BF, C::CUBLAS_COMPUTE_32F),
        _ if ALLOW_TF32.load(std::sync::atomic::Ordering::Relaxed) => (D::CUDA_R_32F, C::CUBLAS_COMPUTE_32F_FAST_TF32),
        _ => (D::CUDA_R_32F, C::CUBLAS_COMPUTE_32F),
    };
    let (one64, zero64, one32, zero32) = (1.0f64, 0.0f64, 1.0f32, 0.0f32);
    let (alpha, beta): (*const std::ffi::c_void, *const std::ffi::c_void) = if dtype == DType::F64 {
        ((&one64 as *const f64).cast(), (&zero64 as *const f64).cast())
    } else {
        ((&one32 as *const f32).cast(), (&zero32 as *const f32).cast())
    };
    let size = dtype.size_in_bytes() as u64;
    let op = |t: bool| if t { cublasOperation_t::CUBLAS_OP_T } else { cublasOperation_t::CUBLAS_OP_N };
    {
        let blas = dev.blas.lock().unwrap_or_else(|e| e.into_inner());
        let (pa, _ga) = storage(&aw).buf.device_ptr(&dev.stream);
        let (pb, _gb) = storage(&bw).buf.device_ptr(&dev.stream);
        let (pc, _gc) = out.buf.device_ptr_mut(&dev.stream);
        // SAFETY: pointers, leading dimensions and batch strides describe the operands' layouts inside their buffers
        // (checked by `gemm_operand`); cuBLAS's A is our B and its B our A (column-major view of row-major data).
        unsafe {
            cudarc::cublas::result::gemm_strided_batched_ex(
                *blas.handle(),
                op(b_t),
                op(a_t),
                n as i32,
                m as i32,
                k as i32,
                alpha,
                (pb + b_off as u64 * size) as *const std::ffi::c_void,
                data_type,
                ldb as i32,
                b_bs as i64,
                (pa + a_off as u64 * size) as *const std::ffi::c_void,
                data_type,
                lda as i32,
                a_bs as i64,
                beta,
                pc as *mut std::ffi::c_void,
                if wide_out { D::CUDA_R_32F } else { data_type },
                n as i32,
                (m * n) as i64,
                batch as i32,
                compute,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT_TENSOR_OP,
            )
        }
        .map_err(|e| Error::Cuda { op: "cublasGemmStridedBatchedEx", msg: e.to_string() })?;
    }
    Ok(Tensor::from_cuda(out, &shape))
}

/// RoPE on `[b, h, s, d]` with u32 positions `[s]` or `[b, s]` already on the device; `inverse` rotates by −θ (the
/// transpose, i.e. the backward).
pub(crate) fn rope(
    x: &Tensor,
    positions: &Tensor,
    cfg: &crate::RopeConfig,
    per_batch: bool,
    inverse: bool,
) -> Result<Tensor> {
    let [b, h, s, d] = *x.shape() else { unreachable!("checked by Tensor::rope") };
    let w = work(x)?;
    let pos = if positions.is_contiguous() { positions.clone() } else { cast(positions, DType::U32)? };
    let dev = Arc::clone(&storage(&w).dev);
    let n = w.elem_count();
    let mut out = dev.alloc(w.dtype(), n)?;
    if n > 0 {
        let sfx = suffix(w.dtype());
        let (xv, nn) = (view(&w), n as i64);
        if cfg.rotary_dims < d {
            // Pass-through dimensions: copy everything first, then rotate the leading ones in place.
            let f = dev.builtin("model", kernels::MODEL, &format!("copy_{sfx}"))?;
            let mut l = dev.stream.launch_builder(&f);
            l.arg(&xv).arg(&mut out.buf).arg(&nn);
            // SAFETY: `n` contiguous elements in and out.
            unsafe { l.launch(grid(n)) }.map_err(launch_err)?;
        }
        let half = cfg.rotary_dims / 2;
        let f = dev.builtin("model", kernels::MODEL, &format!("rope_{sfx}"))?;
        let (bb, hh, ss, dd, hf) = (b as i64, h as i64, s as i64, d as i64, half as i64);
        let (neox, pb, pv) = (i32::from(cfg.style == crate::RopeStyle::NeoX), i32::from(per_batch), view(&pos));
        let inv = i32::from(inverse);
        let mut l = dev.stream.launch_builder(&f);
        l.arg(&xv)
            .arg(&mut out.buf)
            .arg(&pv)
            .arg(&bb)
            .arg(&hh)
            .arg(&ss)
            .arg(&dd)
            .arg(&hf)
            .arg(&neox)
            .arg(&pb)
            .arg(&cfg.base)
            .arg(&inv);
        // One thread per (position slot, pair, chunk of 8 rows sharing the slot): see `rope_body`.
        let (slots, share) = if per_batch { (b * s, h) } else { (s, b * h) };
        // SAFETY: shapes as checked by `Tensor::rope`; positions hold `s` or `b·s` entries.
        unsafe { l.launch(grid(slots * share.div_ceil(8) * half)) }.map_err(launch_err)?;
    }
    finish(Tensor::from_cuda(out, x.shape()), x.dtype())
}

/// Grouped-query attention (shapes checked by `Tensor::attention`); `mask` is already broadcast to
/// `[b, hq, sq, skv]` and on the device.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    causal: bool,
    scale: f64,
) -> Result<Tensor> {
    let [b, hq, sq, d] = *q.shape() else { unreachable!("checked by Tensor::attention") };
    let [_, hkv, skv, _] = *k.shape() else { unreachable!() };
    let dv = v.shape()[3];
    let (qw, kw, vw) = (work(q)?, work(k)?, work(v)?);
    let mw = mask.map(|m| cast(m, DType::U8)).transpose()?;
    let dev = Arc::clone(&storage(&qw).dev);
    let rows = b * hq * sq;
    let mut out = dev.alloc(qw.dtype(), rows * dv)?;
    if rows * dv > 0 {
        let mut scratch = dev.alloc(qw.dtype(), rows * skv.max(1))?;
        let f = dev.builtin("model", kernels::MODEL, &format!("attention_{}", suffix(qw.dtype())))?;
        let (qv, kv, vv) = (view(&qw), view(&kw), view(&vw));
        let mv = mw.as_ref().map(view);
        let null: u64 = 0;
        let dims = [hq as i64, sq as i64, d as i64, hkv as i64, skv as i64, dv as i64];
        let c = i32::from(causal);
        let mut l = dev.stream.launch_builder(&f);
        l.arg(&qv).arg(&kv).arg(&vv);
        match &mv {
            Some(m) => l.arg(m),
            None => l.arg(&null),
        };
        l.arg(&mut out.buf).arg(&mut scratch.buf);
        for x in &dims {
            l.arg(x);
        }
        l.arg(&c).arg(&scale);
        // SAFETY: shapes checked by `Tensor::attention`; scratch holds `skv` entries per query row.
        unsafe { l.launch(rows_grid(rows)) }.map_err(launch_err)?;
    }
    finish(Tensor::from_cuda(out, &[b, hq, sq, dv]), q.dtype())
}

/// `index_select` along `dim` for any dtype; `ids` (u32, on the device) were bounds-checked by the caller.
pub(crate) fn index_select(x: &Tensor, dim: usize, ids: &Tensor) -> Result<Tensor> {
    let src = if x.is_contiguous() { x.clone() } else { cast(x, x.dtype())? };
    let idv = if ids.is_contiguous() { ids.clone() } else { cast(ids, DType::U32)? };
    let (outer, n, inner) = crate::ops::reduce::split_at_dim(x.shape(), dim);
    let picks = ids.elem_count();
    let dev = Arc::clone(&storage(&src).dev);
    let total = outer * picks * inner;
    let mut out = dev.alloc(x.dtype(), total)?;
    if total > 0 {
        let f = dev.builtin("model", kernels::MODEL, "index_select_any")?;
        let (xv, iv) = (view(&src), view(&idv));
        let (o, nn, p, i, es) = (outer as i64, n as i64, picks as i64, inner as i64, x.dtype().size_in_bytes() as i32);
        let mut l = dev.stream.launch_builder(&f);
        l.arg(&xv).arg(&mut out.buf).arg(&iv).arg(&o).arg(&nn).arg(&p).arg(&i).arg(&es);
        // SAFETY: ids < n (checked), buffers sized by the shapes.
        unsafe { l.launch(grid(total)) }.map_err(launch_err)?;
    }
    let mut shape = x.shape().to_vec();
    shape[dim] = picks;
    Ok(Tensor::from_cuda(out, &shape))
}

/// `gather` along `dim` for any dtype (shapes checked and ids bounds-checked by `Tensor::gather`).
pub(crate) fn gather(x: &Tensor, dim: usize, index: &Tensor) -> Result<Tensor> {
    let dev = Arc::clone(&storage(x).dev);
    let n = index.elem_count();
    let mut out = dev.alloc(x.dtype(), n)?;
    if n > 0 {
        let ls = KLayout::new("gather", &x.layout)?;
        let li = KLayout::new("gather", &index.layout)?;
        let f = dev.builtin("model", kernels::MODEL, "gather_any")?;
        let (nn, d, es) = (n as i64, dim as i32, x.dtype().size_in_bytes() as i32);
        let mut l = dev.stream.launch_builder(&f);
        l.arg(&storage(x).buf).arg(&ls).arg(&storage(index).buf).arg(&li).arg(&mut out.buf).arg(&nn).arg(&d).arg(&es);
        // SAFETY: the layouts address elements inside their buffers, ids < the source's size along `dim` (checked),
        // the output holds `n` elements.
        unsafe { l.launch(grid(n)) }.map_err(launch_err)?;
    }
    Ok(Tensor::from_cuda(out, index.shape()))
}

/// `mask ? on_true : on_false` over the broadcast `shape` for any dtype (checked by `Tensor::where_cond`).
pub(crate) fn where_cond(mask: &Tensor, on_true: &Tensor, on_false: &Tensor, shape: &[usize]) -> Result<Tensor> {
    let dev = Arc::clone(&storage(on_true).dev);
    let n: usize = shape.iter().product();
    let mut out = dev.alloc(on_true.dtype(), n)?;
    if n > 0 {
        let lm = KLayout::new("where_cond", &mask.layout.broadcast_as(shape)?)?;
        let lt = KLayout::new("where_cond", &on_true.layout.broadcast_as(shape)?)?;
        let lf = KLayout::new("where_cond", &on_false.layout.broadcast_as(shape)?)?;
        let f = dev.builtin("model", kernels::MODEL, "where_any")?;
        let (nn, es) = (n as i64, on_true.dtype().size_in_bytes() as i32);
        let mut l = dev.stream.launch_builder(&f);
        l.arg(&storage(mask).buf).arg(&lm).arg(&storage(on_true).buf).arg(&lt);
        l.arg(&storage(on_false).buf).arg(&lf).arg(&mut out.buf).arg(&nn).arg(&es);
        // SAFETY: the broadcast layouts address elements inside their buffers; the output holds `n` elements.
        unsafe { l.launch(grid(n)) }.map_err(launch_err)?;
    }
    Ok(Tensor::from_cuda(out, shape))
}

/// The CPU backend's typed error when an id of `index` is `>= size`, naming the first offender in row-major order:
/// one check kernel and one 8-byte read back (the offending id itself is read only on the error path).
fn check_index_range(op: &'static str, index: &Tensor, size: usize) -> Result<()> {
    let n = index.elem_count();
    if n == 0 {
        return Ok(());
    }
    let s = storage(index);
    let dev = Arc::clone(&s.dev);
    // One u64 (as two u32) that the kernel raises to the complement of the lowest bad position; 0 = none.
    let mut bad = dev.alloc(DType::U32, 2)?;
    dev.stream.memset_zeros(&mut bad.buf).map_err(launch_err)?;
    let li = KLayout::new(op, &index.layout)?;
    let f = dev.builtin("index", kernels::INDEX, "index_check")?;
    let (nn, sz) = (n as i64, size as u64);
    let mut l = dev.stream.launch_builder(&f);
    l.arg(&s.buf).arg(&li).arg(&nn).arg(&sz).arg(&mut bad.buf);
    // SAFETY: the layout addresses `n` elements inside the index buffer; `bad` holds 8 bytes (allocations are
    // 256-byte aligned, as the 64-bit atomic needs).
    unsafe { l.launch(grid(n)) }.map_err(launch_err)?;
    let CpuStorage::U32(flag) = bad.download_range(0, 2)? else { unreachable!("a u32 buffer downloads as u32") };
    let flag = u64::from(flag[0]) | (u64::from(flag[1]) << 32);
    if flag == 0 {
        return Ok(());
    }
    let coord = crate::reference::unravel(!flag as usize, index.shape());
    let off = index.layout.offset() + coord.iter().zip(index.layout.strides()).map(|(c, st)| c * st).sum::<usize>();
    let CpuStorage::U32(id) = s.download_range(off, 1)? else { unreachable!("a u32 buffer downloads as u32") };
    Err(Error::IndexOutOfBounds { op, index: id[0] as usize, size })
}

/// `scatter` (`add = false`) or `scatter_add` into a copy of `base` (dtypes, devices and shapes checked by
/// `Tensor::scatter_impl`): ids are checked on the device first (the CPU's typed error, then its dtype error for a
/// non-float `scatter_add`), then one thread per lane of the index applies the writes in the CPU's order, so the
/// result is the CPU's bit for bit (for `scatter_add`, as long as no sum is NaN: the GPU's NaN payloads differ).
/// `scatter_add` on f16/bf16 accumulates in an f32 copy and rounds once at the end, as the CPU does.
pub(crate) fn scatter(
    base: &Tensor,
    op: &'static str,
    dim: usize,
    index: &Tensor,
    src: &Tensor,
    add: bool,
) -> Result<Tensor> {
    check_index_range(op, index, base.shape()[dim])?;
    if add {
        base.check_float(op)?;
    }
    let dev = Arc::clone(&storage(base).dev);
    let wd = if add && matches!(base.dtype(), DType::F16 | DType::BF16) { DType::F32 } else { base.dtype() };
    let mut out = cast_storage(base, wd)?;
    let len = index.shape()[dim];
    let lanes: usize = index.shape().iter().enumerate().filter(|&(d, _)| d != dim).map(|(_, &s)| s).product();
    if lanes > 0 && len > 0 {
        let li = KLayout::new(op, &index.layout)?;
        let ls = KLayout::new(op, &src.layout)?;
        let lo = KLayout::new(op, &Layout::contiguous(base.shape()))?;
        let (nl, d) = (lanes as i64, dim as i32);
        let (ib, sb) = (&storage(index).buf, &storage(src).buf);
        let f = match (add, wd) {
            (false, _) => dev.builtin("index", kernels::INDEX, "scatter_any")?,
            (true, DType::F64) => dev.builtin("index", kernels::INDEX, "scatter_add_f64")?,
            (true, _) => dev.builtin("index", kernels::INDEX, "scatter_add_f32")?,
        };
        let (es, sdt) = (base.dtype().size_in_bytes() as i32, dtype_id(src.dtype()));
        let mut l = dev.stream.launch_builder(&f);
        l.arg(ib).arg(&li).arg(sb);
        if add && wd == DType::F32 {
            l.arg(&sdt);
        }
        l.arg(&ls).arg(&mut out.buf).arg(&lo).arg(&nl).arg(&d);
        if !add {
            l.arg(&es);
        }
        // SAFETY: the index and source layouts address elements inside their buffers (the source is at least the
        // index's size in every dimension), ids < the output's size along `dim` (checked above), and `out` is a
        // fresh contiguous buffer of the output's shape in the work dtype `wd`.
        unsafe { l.launch(grid(lanes)) }.map_err(launch_err)?;
    }
    let out = Tensor::from_cuda(out, base.shape());
    if wd == base.dtype() { Ok(out) } else { cast(&out, base.dtype()) }
}

/// The `k` largest entries of each row along the last dimension with their u32 indices, in the CPU's order
/// (`order_key` descending, ties by the lower index, NaN above +∞): one block per row. Rows must have at most
/// `u32::MAX` elements (the kernel's ids and counters are 32-bit); `Tensor::top_k` checks `k <= n`.
pub(crate) fn top_k(x: &Tensor, k: usize) -> Result<(Tensor, Tensor)> {
    x.check_float("top_k")?;
    let last = x.rank() - 1;
    let n = x.shape()[last];
    let rows: usize = x.shape()[..last].iter().product();
    let mut shape = x.shape().to_vec();
    shape[last] = k;
    let dev = Arc::clone(&storage(x).dev);
    let mut vals = dev.alloc(x.dtype(), rows * k)?;
    let mut ids = dev.alloc(DType::U32, rows * k)?;
    if rows * k > 0 {
        let src = if x.is_contiguous() { x.clone() } else { cast(x, x.dtype())? };
        let f = dev.builtin("index", kernels::INDEX, "topk_rows")?;
        let (xv, dt, r, nn, kk) = (view(&src), dtype_id(x.dtype()), rows as i64, n as i64, k as i64);
        let mut l = dev.stream.launch_builder(&f);
        l.arg(&xv).arg(&dt).arg(&r).arg(&nn).arg(&kk).arg(&mut vals.buf).arg(&mut ids.buf);
        // Up to 1024 threads per row (30 registers each); blocks loop over rows past the grid.
        let threads = n.div_ceil(32).clamp(1, 32) as u32 * 32;
        let cfg =
            LaunchConfig { grid_dim: (rows.min(65_535) as u32, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: `rows·n` contiguous inputs from the view's start, `rows·k` outputs in each buffer, 0 < k <= n.
        unsafe { l.launch(cfg) }.map_err(launch_err)?;
    }
    Ok((Tensor::from_cuda(vals, &shape), Tensor::from_cuda(ids, &shape)))
}

/// Op ids of the derivative kernels (`kernels::GRAD`).
pub(crate) const GRAD_ABS: i32 = 0;
/// ReLU's `g·f'(x)`.
pub(crate) const GRAD_RELU: i32 = 1;
/// GELU's (tanh approximation) `g·f'(x)`.
pub(crate) const GRAD_GELU: i32 = 2;
/// GELU's (erf) `g·f'(x)`.
pub(crate) const GRAD_GELU_ERF: i32 = 3;
/// `g` where `p0 <= x <= p1`, else 0.
pub(crate) const GRAD_CLAMP: i32 = 4;
/// The maximum's weight of its first operand (`g` holds the second operand).
pub(crate) const GRAD_MAX_WEIGHT: i32 = 5;
/// The minimum's weight of its first operand (`g` holds the second operand).
pub(crate) const GRAD_MIN_WEIGHT: i32 = 6;

/// One derivative kernel over `x` and `g` (float tensors of one shape whose work dtypes agree, checked by the
/// caller): computed in the work precision (f32 for f16/bf16) and rounded once to `x`'s dtype, as on the CPU.
pub(crate) fn grad_zip(x: &Tensor, g: &Tensor, op: i32, p0: f64, p1: f64) -> Result<Tensor> {
    let (xw, gw) = (work(x)?, work(g)?);
    let dev = Arc::clone(&storage(&xw).dev);
    let n = xw.elem_count();
    let mut out = dev.alloc(xw.dtype(), n)?;
    if n > 0 {
        let f = dev.builtin("grad", kernels::GRAD, &format!("grad_{}", suffix(xw.dtype())))?;
        let (nn, xv, gv) = (n as i64, view(&xw), view(&gw));
        let mut l = dev.stream.launch_builder(&f);
        l.arg(&xv).arg(&gv).arg(&mut out.buf).arg(&nn).arg(&op);
        // The CPU's f32 closures compare with the bounds rounded to f32 (`lo as f32`).
        let (p0f, p1f) = (p0 as f32, p1 as f32);
        if xw.dtype() == DType::F64 {
            l.arg(&p0).arg(&p1);
        } else {
            l.arg(&p0f).arg(&p1f);
        }
        // SAFETY: three contiguous buffers of `n` elements of the work dtype.
        unsafe { l.launch(grid(n)) }.map_err(launch_err)?;
    }
    finish(Tensor::from_cuda(out, x.shape()), x.dtype())
}

/// Concatenation along `dim` (shapes and dtypes checked by `Tensor::concat`).
pub(crate) fn concat(parts: &[&Tensor], dim: usize, shape: &[usize]) -> Result<Tensor> {
    let first = parts[0];
    let dev = Arc::clone(&storage(first).dev);
    let (outer, total, inner) = crate::ops::reduce::split_at_dim(shape, dim);
    let mut out = dev.alloc(first.dtype(), outer * total * inner)?;
    let f = dev.builtin("model", kernels::MODEL, "concat_part")?;
    let mut at = 0usize;
    for p in parts {
        let len = p.shape()[dim];
        let count = outer * len * inner;
        if count > 0 {
            let c = if p.is_contiguous() { (*p).clone() } else { cast(p, p.dtype())? };
            let xv = view(&c);
            let (o, ln, i, t, a, es) =
                (outer as i64, len as i64, inner as i64, total as i64, at as i64, p.dtype().size_in_bytes() as i32);
            let mut l = dev.stream.launch_builder(&f);
            l.arg(&xv).arg(&mut out.buf).arg(&o).arg(&ln).arg(&i).arg(&t).arg(&a).arg(&es);
            // SAFETY: the part fits its slot of the output.
            unsafe { l.launch(grid(count)) }.map_err(launch_err)?;
        }
        at += len;
    }
    Ok(Tensor::from_cuda(out, shape))
}

/// `argmax` / `argmin` over `dim` (keepdim shape).
pub(crate) fn arg_reduce(x: &Tensor, dim: usize, max: bool) -> Result<Tensor> {
    let w = work(x)?;
    let (outer, n, inner) = crate::ops::reduce::split_at_dim(x.shape(), dim);
    let dev = Arc::clone(&storage(&w).dev);
    let count = outer * inner;
    let mut out = dev.alloc(DType::U32, count)?;
    if count > 0 {
        let f = dev.builtin("model", kernels::MODEL, &format!("argreduce_{}", suffix(w.dtype())))?;
        let (xv, nn, ii, mx) = (view(&w), n as i64, inner as i64, i32::from(max));
        let mut l = dev.stream.launch_builder(&f);
        l.arg(&xv).arg(&mut out.buf).arg(&nn).arg(&ii).arg(&mx);
        // SAFETY: `outer·n·inner` inputs, `outer·inner` outputs.
        unsafe { l.launch(rows_grid(count)) }.map_err(launch_err)?;
    }
    let mut shape = x.shape().to_vec();
    shape[dim] = 1;
    Ok(Tensor::from_cuda(out, &shape))
}

/// The widest row (in f32 values) the warp-per-row kernels (RMSNorm forward and backward, attention rows) keep in
/// registers: 32 lanes × 8 float4s.
const WARP_ROW_MAX: usize = 1024;

/// The attention row kernel `stem` (`attn_softmax`, `attn_grad`) for rows of `skv` keys, and whether it is the
/// warp-per-row one (which takes the row count and [`warp_rows_grid`]): f64 rows and f32 rows past
/// [`WARP_ROW_MAX`] keys take the block kernel; other f32 rows the warp kernel with the fewest register slots per
/// lane (8, 16 or 32) that hold the row — fewer registers, more resident warps.
fn attn_rows_kernel(stem: &str, f64_: bool, skv: usize) -> (String, bool) {
    if f64_ {
        return (format!("{stem}_f64"), false);
    }
    if skv > WARP_ROW_MAX {
        return (format!("{stem}_f32"), false);
    }
    let slots = if skv <= 256 {
        8
    } else if skv <= 512 {
        16
    } else {
        32
    };
    (format!("{stem}_warp{slots}_f32"), true)
}

/// One warp per row, eight rows per 256-thread block.
fn warp_rows_grid(rows: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (rows.div_ceil(8).max(1) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

/// `Σ x²` of each f32 tensor (one device), two launches and one download for the whole set (see `sq_norm_chunks` in
/// `kernels::TRAIN`).
pub(crate) fn squared_norms_f32(tensors: &[&Tensor]) -> Result<Vec<f64>> {
    use cudarc::driver::DevicePtr;
    const CHUNK: usize = 8192;
    let works: Vec<Tensor> = tensors.iter().map(|t| work(t)).collect::<Result<_>>()?;
    let dev = Arc::clone(&storage(&works[0]).dev);
    let mut table: Vec<u64> = Vec::with_capacity(3 * works.len());
    let mut chunks = 0usize;
    // Keep the views (and their pointer guards) alive until both kernels are queued.
    let views: Vec<CudaView<'_, u8>> = works.iter().map(view).collect();
    let mut guards = Vec::with_capacity(views.len());
    for (w, v) in works.iter().zip(&views) {
        let (ptr, g) = v.device_ptr(&dev.stream);
        guards.push(g);
        table.extend([ptr, w.elem_count() as u64, chunks as u64]);
        chunks += w.elem_count().div_ceil(CHUNK);
    }
    if chunks == 0 {
        return Ok(vec![0.0; works.len()]);
    }
    let mut out = dev.alloc(DType::F64, works.len())?;
    let table_dev = dev.stream.clone_htod(&table).map_err(launch_err)?;
    let mut partials = dev.alloc(DType::F64, chunks)?;
    let (nt, nc) = (works.len() as i64, chunks as i64);
    let f = dev.builtin("train", kernels::TRAIN, "sq_norm_chunks")?;
    let mut l = dev.stream.launch_builder(&f);
    l.arg(&table_dev).arg(&nt).arg(&mut partials.buf);
    let cfg = LaunchConfig { grid_dim: (chunks as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: the table holds each tensor's address (alive in `works`), element count and first chunk, in chunk
    // order; `partials` holds one f64 per chunk.
    unsafe { l.launch(cfg) }.map_err(launch_err)?;
    let f = dev.builtin("train", kernels::TRAIN, "sq_norm_totals")?;
    let mut l = dev.stream.launch_builder(&f);
    l.arg(&table_dev).arg(&partials.buf).arg(&nt).arg(&nc).arg(&mut out.buf);
    let cfg = LaunchConfig { grid_dim: (works.len() as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: `partials` holds `chunks` sums, `out` one f64 per tensor.
    unsafe { l.launch(cfg) }.map_err(launch_err)?;
    drop(guards);
    let host = Tensor::from_cuda(out, &[works.len()]).to_vec::<f64>()?;
    drop(works);
    Ok(host)
}

/// A device tensor of `shape` whose every element has the little-endian bit pattern `bits`.
pub(crate) fn fill(device: crate::Device, shape: &[usize], dtype: DType, bits: u64) -> Result<Tensor> {
    let dev = super::backend::get(device)?;
    let n: usize = shape.iter().product();
    let mut out = dev.alloc(dtype, n)?;
    if n > 0 && dtype.size_in_bytes() == 4 {
        // A fresh allocation is 256-byte aligned: 16-byte stores of four elements per thread.
        let f = dev.builtin("fill", kernels::FILL, "fill_u32_x4")?;
        let (nn, b32) = (n as i64, bits as u32);
        let mut l = dev.stream.launch_builder(&f);
        l.arg(&mut out.buf).arg(&nn).arg(&b32);
        // SAFETY: `n` elements of 4 bytes in a fresh (aligned) allocation.
        unsafe { l.launch(grid(n.div_ceil(4))) }.map_err(launch_err)?;
    } else if n > 0 {
        let f = dev.builtin("fill", kernels::FILL, "fill_any")?;
        let (nn, es) = (n as i64, dtype.size_in_bytes() as i32);
        let mut l = dev.stream.launch_builder(&f);
        l.arg(&mut out.buf).arg(&nn).arg(&bits).arg(&es);
        // SAFETY: `n` elements of `es` bytes.
        unsafe { l.launch(grid(n)) }.map_err(launch_err)?;
    }
    Ok(Tensor::from_cuda(out, shape))
}

fn quant_id(ty: crate::quant::QuantType) -> i32 {
    match ty {
        crate::quant::QuantType::Q4_0 => 0,
        crate::quant::QuantType::Q4_1 => 1,
        crate::quant::QuantType::Q8_0 => 2,
    }
}

/// Dynamic shared memory the Q8-activation GEMV may ask for without raising the kernel's limit (48 KiB).
const QGEMV_Q8A_MAX_SMEM: usize = 48 * 1024;

/// The longest Q8_0 row (in blocks) of the coalesced single-row kernel: its lanes hold 5 words of a row each.
const QGEMV1_Q8_0_MAX_BLOCKS: usize = 18;

/// `Y[m × n] = X[m × k] · Wᵀ` with W's blocks (a u8 tensor on the device): the fused GEMV for `m ≤ 8` (one f32
/// activation row against Q4_1 blocks, or against Q8_0 rows of up to 18 blocks, takes a single-row kernel), else
/// dequantize to f32 and cuBLAS. With [`crate::quant::ActivationQuant::Q8`] the GEMV quantises the activations per
/// 32-block (ggml's Q8_1, as the CPU's Q8 path) and uses integer dot products, for rows up to
/// `QGEMV_Q8A_MAX_SMEM` bytes of quants (k ≤ 39,000 or so); longer rows and prefill take f32 activations.
pub(crate) fn qlinear(
    x: &Tensor,
    blocks: &Tensor,
    ty: crate::quant::QuantType,
    n: usize,
    k: usize,
    act: crate::quant::ActivationQuant,
) -> Result<Tensor> {
    let m = x.elem_count().checked_div(k).unwrap_or(0);
    let xw = if x.dtype() == DType::F32 && x.is_contiguous() { x.clone() } else { cast(x, DType::F32)? };
    let dev = Arc::clone(&storage(&xw).dev);
    // The GEMV reads Q4_1 blocks as 4-byte words and the others as 2-byte halves: blocks in a view at an unaligned
    // offset are copied once to a buffer of their own.
    let aligned;
    let blocks = if !blocks.layout.offset().is_multiple_of(4) || !blocks.is_contiguous() {
        aligned = cast(blocks, DType::U8)?;
        &aligned
    } else {
        blocks
    };
    let wv = view(blocks);
    let tid = quant_id(ty);
    // One f32 activation row (the LM head of a decode step) takes a single-row kernel where one applies: (name,
    // CTAs, dynamic shared memory). Both run persistent CTAs of 256 threads.
    let nb = k / 32;
    let table_smem = 4 * (k + 4 * nb + 32);
    let single = match ty {
        _ if m != 1 || n == 0 || act != crate::quant::ActivationQuant::F32 => None,
        // 3 CTAs per SM (the kernel's register bound), tiles of 64 rows; the shared memory holds the activation table
        // (k + 4·k/32 floats and one per warp). Smaller CTAs for matrices of few rows measured slower: each CTA
        // builds the whole table first.
        crate::quant::QuantType::Q4_1 if table_smem <= QGEMV_Q8A_MAX_SMEM => {
            Some(("qgemv1_q4_1", (dev.multiprocessor_count() * 3).min(n.div_ceil(64)), table_smem))
        }
        // Rows of an even block count stay 4-byte aligned, so every word the kernel reads lies in its row; 2 CTAs
        // per SM (the register bound), 4 rows per warp at a time; 32-bit row indices.
        crate::quant::QuantType::Q8_0 if nb.is_multiple_of(2) && nb <= QGEMV1_Q8_0_MAX_BLOCKS && n < 1 << 30 => {
            Some(("qgemv1_q8_0", (dev.multiprocessor_count() * 2).min(n.div_ceil(32)), 0))
        }
        _ => None,
    };
    if let Some((name, ctas, smem)) = single {
        let mut out = dev.alloc(DType::F32, n)?;
        let f = dev.builtin("quant", kernels::QUANT, name)?;
        let (xv, nn, kk) = (view(&xw), n as i64, k as i64);
        let mut l = dev.stream.launch_builder(&f);
        l.arg(&wv).arg(&xv).arg(&mut out.buf).arg(&nn).arg(&kk);
        let cfg = cudarc::driver::LaunchConfig {
            grid_dim: (ctas as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: smem as u32,
        };
        // SAFETY: `blocks` holds n rows of k/32 blocks of `ty` (checked by QWeight), 4-byte aligned (above); x holds
        // k floats; the shared memory is what the kernel indexes (above).
        unsafe { l.launch(cfg) }.map_err(launch_err)?;
        return Ok(Tensor::from_cuda(out, &[1, n]));
    }
    if m <= crate::SKINNY_MAX_ROWS {
        let mut out = dev.alloc(DType::F32, m * n)?;
        if m * n > 0 {
            // Q8 activations: one row of quants, d and s in shared memory (k bytes padded to 16, 8 bytes a block).
            let smem = k.next_multiple_of(16) + 8 * (k / 32);
            let q8 = act == crate::quant::ActivationQuant::Q8 && smem <= QGEMV_Q8A_MAX_SMEM;
            let name = match (ty, q8) {
                (crate::quant::QuantType::Q4_0, false) => "qgemv_q4_0",
                (crate::quant::QuantType::Q4_1, false) => "qgemv_q4_1",
                (crate::quant::QuantType::Q8_0, false) => "qgemv_q8_0",
                (crate::quant::QuantType::Q4_0, true) => "qgemv_q8a_q4_0",
                (crate::quant::QuantType::Q4_1, true) => "qgemv_q8a_q4_1",
                (crate::quant::QuantType::Q8_0, true) => "qgemv_q8a_q8_0",
            };
            let f = dev.builtin("quant", kernels::QUANT, name)?;
            let (xv, nn, kk, mm) = (view(&xw), n as i64, k as i64, m as i64);
            let mut l = dev.stream.launch_builder(&f);
            l.arg(&wv).arg(&xv).arg(&mut out.buf).arg(&nn).arg(&kk).arg(&mm);
            // 256 threads: 16 half-warps of 4 rows each (see the kernel).
            let rows_per_cta = 16 * 4;
            let cfg = cudarc::driver::LaunchConfig {
                grid_dim: (n.div_ceil(rows_per_cta) as u32, 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: if q8 { smem as u32 } else { 0 },
            };
            // SAFETY: `blocks` holds n·k/32 blocks of the type's size (checked by QWeight), x holds m·k floats; the
            // Q8 kernel gets the shared memory it indexes (k + 8·k/32 bytes, within the default limit).
            unsafe { l.launch(cfg) }.map_err(launch_err)?;
        }
        return Ok(Tensor::from_cuda(out, &[m, n]));
    }
    let n_blocks = n * k / 32;
    let mut wf = dev.alloc(DType::F32, n * k)?;
    let f = dev.builtin("quant", kernels::QUANT, "qdequant")?;
    let (nbk, mut l) = (n_blocks as i64, dev.stream.launch_builder(&f));
    l.arg(&wv).arg(&mut wf.buf).arg(&nbk).arg(&tid);
    // SAFETY: `n_blocks` blocks in, 32 floats per block out.
    unsafe { l.launch(grid(n_blocks)) }.map_err(launch_err)?;
    let w = Tensor::from_cuda(wf, &[n, k]);
    xw.reshape(&[m, k])?.matmul(&w.t()?)
}

/// `Y[m × n] = X[m × k] · Wᵀ` with W in the GEMV tile layout (`quant::tiles`): the tile GEMV for `m ≤ 8` (one CTA
/// row per activation row), else, or when the activation table would not fit the default 48 KiB of shared memory
/// (k beyond about 10,000), dequantize the tiles to f32 and cuBLAS.
pub(crate) fn qlinear_tiles(
    x: &Tensor,
    tiles: &Tensor,
    ty: crate::quant::QuantType,
    n: usize,
    k: usize,
) -> Result<Tensor> {
    let m = x.elem_count().checked_div(k).unwrap_or(0);
    let xw = if x.dtype() == DType::F32 && x.is_contiguous() { x.clone() } else { cast(x, DType::F32)? };
    let dev = Arc::clone(&storage(&xw).dev);
    // `tiles` is the private buffer `QWeight::with_gemv_layout` uploaded: contiguous from offset 0, so its 16-byte
    // words are aligned.
    let wv = view(tiles);
    let steps = (k / 32).div_ceil(2);
    // The table: 9 float4s per (padded) block, then the blocks' max|x| and scaled Σx.
    let smem = 4 * 38 * 2 * steps;
    if m <= crate::SKINNY_MAX_ROWS && smem <= QGEMV_Q8A_MAX_SMEM && n < 1 << 30 && k < 1 << 30 {
        let mut out = dev.alloc(DType::F32, m * n)?;
        if m * n > 0 {
            // Rows of 9 or 24 steps (576 or 1,536 columns, SmolLM2's) take a fully unrolled instance.
            use crate::quant::QuantType::{Q4_0, Q4_1, Q8_0};
            let name = match (steps, ty) {
                (9, Q4_0) => "qgemv_tiles_s9_q4_0",
                (9, Q4_1) => "qgemv_tiles_s9_q4_1",
                (9, Q8_0) => "qgemv_tiles_s9_q8_0",
                (24, Q4_0) => "qgemv_tiles_s24_q4_0",
                (24, Q4_1) => "qgemv_tiles_s24_q4_1",
                (24, Q8_0) => "qgemv_tiles_s24_q8_0",
                (_, Q4_0) => "qgemv_tiles_q4_0",
                (_, Q4_1) => "qgemv_tiles_q4_1",
                (_, Q8_0) => "qgemv_tiles_q8_0",
            };
            let f = dev.builtin("quant", kernels::QUANT, name)?;
            let xv = view(&xw);
            let (wp, _wg) = wv.device_ptr(&dev.stream);
            let (xp, _xg) = xv.device_ptr(&dev.stream);
            let (yp, _yg) = out.buf.device_ptr_mut(&dev.stream);
            let (mut wp, mut xp, mut yp, mut nn, mut kk) = (wp, xp, yp, n as i32, k as i32);
            let mut params: [*mut std::ffi::c_void; 5] = [
                (&mut wp as *mut u64).cast(),
                (&mut xp as *mut u64).cast(),
                (&mut yp as *mut u64).cast(),
                (&mut nn as *mut i32).cast(),
                (&mut kk as *mut i32).cast(),
            ];
            // One warp per tile of 16 rows, 8 warps per CTA; one CTA row per activation row.
            let cfg = cudarc::driver::LaunchConfig {
                grid_dim: (n.div_ceil(crate::quant::tiles::TILE_ROWS * 8) as u32, m as u32, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: smem as u32,
            };
            // On Hopper a programmatic dependent launch: the kernel's first weight loads and its CTAs' start overlap
            // the previous kernel's tail (it waits for that kernel before reading x or writing y; the tiles it
            // reads earlier are only ever written by the upload copy). 13-21 points of copy bandwidth on the LM
            // head in a stream of calls on an H100 (`docs/benchmarks-gpu.md`).
            let mode = if dev.overlapping_launch() { LaunchMode::Overlapping } else { LaunchMode::Plain };
            // SAFETY: `tiles` holds the tile layout of an n × k matrix of `ty` (built by QWeight::with_gemv_layout,
            // 16-byte aligned above); x holds m·k floats, out m·n; the shared memory is what the kernel indexes;
            // the five parameters are the kernel's (u8*, float*, float*, int, int), the buffers alive past the
            // launch (their guards); the kernel waits before touching what an earlier kernel may write.
            unsafe { launch_with_attribute(&dev, &f, cfg, &mut params, mode) }?;
        }
        return Ok(Tensor::from_cuda(out, &[m, n]));
    }
    let mut wf = dev.alloc(DType::F32, n * k)?;
    let f = dev.builtin("quant", kernels::QUANT, "qdequant_tiles")?;
    let (nn, kk, tid, mut l) = (n as i64, k as i64, quant_id(ty), dev.stream.launch_builder(&f));
    l.arg(&wv).arg(&mut wf.buf).arg(&nn).arg(&kk).arg(&tid);
    // SAFETY: the tile layout of n × k in, n·k floats out (one thread per block).
    unsafe { l.launch(grid(n * k / 32)) }.map_err(launch_err)?;
    let w = Tensor::from_cuda(wf, &[n, k]);
    xw.reshape(&[m, k])?.matmul(&w.t()?)
}

/// In-place `dst[.., start..start + len, ..] = src` along `dim` (checked by `Tensor::slice_assign`): one
/// `concat_part` launch into `dst`'s own buffer. A shared or strided `dst` is first replaced by a private
/// contiguous copy (copy on write), as on the CPU.
pub(crate) fn slice_assign(dst: &mut Tensor, dim: usize, start: usize, src: &Tensor) -> Result<()> {
    if !dst.is_contiguous() || dst.layout.offset() != 0 || Arc::get_mut(&mut dst.storage).is_none() {
        *dst = cast(dst, dst.dtype())?;
    }
    let src = if src.is_contiguous() { src.clone() } else { cast(src, src.dtype())? };
    let (outer, total, inner) = crate::ops::reduce::split_at_dim(dst.shape(), dim);
    let len = src.shape()[dim];
    let count = outer * len * inner;
    if count == 0 {
        return Ok(());
    }
    let es = dst.dtype().size_in_bytes() as i32;
    let Some(Storage::Cuda(out)) = Arc::get_mut(&mut dst.storage) else {
        return Err(Error::Layout { op: "slice_assign", msg: "destination is not a private CUDA buffer".into() });
    };
    let dev = Arc::clone(&out.dev);
    let f = dev.builtin("model", kernels::MODEL, "concat_part")?;
    let xv = view(&src);
    let (o, ln, i, t, a) = (outer as i64, len as i64, inner as i64, total as i64, start as i64);
    let mut l = dev.stream.launch_builder(&f);
    l.arg(&xv).arg(&mut out.buf).arg(&o).arg(&ln).arg(&i).arg(&t).arg(&a).arg(&es);
    // SAFETY: `Tensor::slice_assign` checked that the slice lies inside `dst`; `src` is contiguous.
    unsafe { l.launch(grid(count)) }.map_err(launch_err)?;
    Ok(())
}

/// Per-row log-sum-exp of contiguous f32 logits `[rows, v]` (the forward of the fused cross-entropy).
pub(crate) fn ce_lse(x: &Tensor, rows: usize, v: usize) -> Result<Tensor> {
    let xw = if x.is_contiguous() && x.dtype() == DType::F32 { x.clone() } else { cast(x, DType::F32)? };
    let dev = Arc::clone(&storage(&xw).dev);
    let mut out = dev.alloc(DType::F32, rows)?;
    let f = dev.builtin("train", kernels::TRAIN, "ce_lse_f32")?;
    let (xv, vv) = (view(&xw), v as i64);
    let mut b = dev.stream.launch_builder(&f);
    b.arg(&xv).arg(&mut out.buf).arg(&vv);
    // SAFETY: `rows` contiguous rows of `v` f32 in, one f32 per row out.
    unsafe { b.launch(rows_grid(rows)) }.map_err(launch_err)?;
    Ok(Tensor::from_cuda(out, &[rows]))
}

/// `(exp(x − lse) − onehot(t)) · g / rows` for contiguous f32 logits `[rows, v]`, u32 targets `[rows]` (checked
/// `< v` by the caller) and the scalar upstream gradient `g` (all on the device).
pub(crate) fn ce_grad(x: &Tensor, lse: &Tensor, targets: &Tensor, g: &Tensor, rows: usize, v: usize) -> Result<Tensor> {
    let xw = if x.is_contiguous() && x.dtype() == DType::F32 { x.clone() } else { cast(x, DType::F32)? };
    let gw = if g.dtype() == DType::F32 { g.contiguous()? } else { cast(g, DType::F32)? };
    let tw = if targets.is_contiguous() { targets.clone() } else { cast(targets, DType::U32)? };
    let dev = Arc::clone(&storage(&xw).dev);
    let mut out = dev.alloc(DType::F32, rows * v)?;
    let f = dev.builtin("train", kernels::TRAIN, "ce_grad_f32")?;
    let (xv, lv, tv, gv) = (view(&xw), view(lse), view(&tw), view(&gw));
    let (vv, inv) = (v as i64, 1.0f32 / rows as f32);
    let mut b = dev.stream.launch_builder(&f);
    b.arg(&xv).arg(&lv).arg(&tv).arg(&gv).arg(&mut out.buf).arg(&vv).arg(&inv);
    // SAFETY: `rows` rows of `v` f32 in and out, `rows` lse values and targets, one scalar `g`.
    unsafe { b.launch(rows_grid(rows)) }.map_err(launch_err)?;
    Ok(Tensor::from_cuda(out, &[rows, v]))
}

/// `out[ids[p], :] += g[p, :]` into a zero f32 `[n, inner]` (the backward of `index_select` along dim 0); ids were
/// bounds-checked by the forward.
pub(crate) fn index_add_rows(g: &Tensor, ids: &Tensor, n: usize) -> Result<Tensor> {
    let gw = if g.dtype() == DType::F32 && g.is_contiguous() { g.clone() } else { cast(g, DType::F32)? };
    let iw = if ids.is_contiguous() { ids.clone() } else { cast(ids, DType::U32)? };
    let picks = ids.elem_count();
    let inner = gw.elem_count().checked_div(picks).unwrap_or(0);
    let dev = Arc::clone(&storage(&gw).dev);
    let mut out = dev.alloc(DType::F32, n * inner)?;
    dev.stream.memset_zeros(&mut out.buf).map_err(launch_err)?;
    let total = picks * inner;
    if total > 0 {
        let f = dev.builtin("train", kernels::TRAIN, "index_add_rows_f32")?;
        let (gv, iv) = (view(&gw), view(&iw));
        let (p, i) = (picks as i64, inner as i64);
        let mut b = dev.stream.launch_builder(&f);
        b.arg(&gv).arg(&iv).arg(&mut out.buf).arg(&p).arg(&i);
        // SAFETY: `picks · inner` gradient values, `picks` ids < n, `out` holds `n · inner` zeroed f32.
        unsafe { b.launch(grid(total)) }.map_err(launch_err)?;
    }
    Ok(Tensor::from_cuda(out, &[n, inner]))
}

/// The private contiguous buffer of a freshly computed score tensor, written in place by the attention row kernels.
fn attn_rows_storage(t: &mut Tensor) -> Result<&mut CudaStorage> {
    match Arc::get_mut(&mut t.storage) {
        Some(Storage::Cuda(s)) if t.layout.is_contiguous() && t.layout.offset() == 0 => Ok(s),
        _ => Err(Error::Layout { op: "attention", msg: "scores are not a private contiguous CUDA buffer".into() }),
    }
}

/// Grouped-query attention through cuBLAS for long query blocks (prefill, training): `S = q kᵀ` batched over
/// `batch · heads_kv` with the query heads of one KV head stacked (`[b, hkv, group · sq, skv]`, no copy of `k`),
/// one fused kernel for scale + mask + softmax in place, then `O = P v`. Works in f32 (f64 for f64): scores of
/// 16-bit inputs are never rounded to 16 bits. `mask` is already `[b, hq, sq, skv]` u8 on the device.
pub(crate) fn attention_gemm(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    causal: bool,
    scale: f64,
) -> Result<Tensor> {
    let [b, hq, sq, d] = *q.shape() else { unreachable!("checked by Tensor::attention") };
    let [_, hkv, skv, _] = *k.shape() else { unreachable!() };
    let dv = v.shape()[3];
    let group = hq / hkv;
    let (qw, kw, vw) = (work(q)?, work(k)?, work(v)?);
    let mw = mask.map(|m| if m.is_contiguous() { Ok(m.clone()) } else { cast(m, DType::U8) }).transpose()?;
    let qg = qw.reshape(&[b, hkv, group * sq, d])?;
    let mut s = qg.matmul(&kw.t()?)?;
    attn_softmax(&mut s, mw.as_ref(), sq, skv, causal, scale)?;
    let out = s.matmul(&vw)?.reshape(&[b, hq, sq, dv])?;
    finish(out, q.dtype())
}

fn attn_softmax(s: &mut Tensor, mask: Option<&Tensor>, sq: usize, skv: usize, causal: bool, scale: f64) -> Result<()> {
    let rows = s.elem_count() / skv.max(1);
    let f64_ = s.dtype() == DType::F64;
    let st = attn_rows_storage(s)?;
    let dev = Arc::clone(&st.dev);
    if rows == 0 || skv == 0 {
        return Ok(());
    }
    let (name, warp) = attn_rows_kernel("attn_softmax", f64_, skv);
    let f = dev.builtin("train", kernels::TRAIN, &name)?;
    let mv = mask.map(view);
    let null: u64 = 0;
    let (rr, sqv, skvv, c, sc32) = (rows as i64, sq as i64, skv as i64, i32::from(causal), scale as f32);
    let mut l = dev.stream.launch_builder(&f);
    l.arg(&mut st.buf);
    match &mv {
        Some(m) => l.arg(m),
        None => l.arg(&null),
    };
    if warp {
        l.arg(&rr);
    }
    l.arg(&sqv).arg(&skvv).arg(&c);
    if f64_ {
        l.arg(&scale);
    } else {
        l.arg(&sc32);
    }
    let cfg = if warp { warp_rows_grid(rows) } else { rows_grid(rows) };
    // SAFETY: `s` holds `rows · skv` contiguous scores; the mask (if any) `rows · skv` bytes in the same row order.
    unsafe { l.launch(cfg) }.map_err(launch_err)?;
    Ok(())
}

/// Gradients `(dq, dk, dv)` of [`attention_gemm`] for upstream gradient `g` and forward output `out` (both
/// `[b, hq, sq, dv]`): `S = q kᵀ` recomputed, `dP = dO vᵀ`, one fused kernel for `P` and
/// `dS = scale · P ⊙ (dP − rowsum(dO ⊙ O))`, then `dv = Pᵀ dO`, `dq = dS k`, `dk = dSᵀ q` (all batched GEMMs).
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_gemm_backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &Tensor,
    g: &Tensor,
    mask: Option<&Tensor>,
    causal: bool,
    scale: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let [b, hq, sq, d] = *q.shape() else { unreachable!("checked by Tensor::attention") };
    let [_, hkv, skv, _] = *k.shape() else { unreachable!() };
    let dvw = v.shape()[3];
    let group = hq / hkv;
    let (qw, kw, vw, ow, gw) = (work(q)?, work(k)?, work(v)?, work(out)?, work(g)?);
    let mw = mask.map(|m| if m.is_contiguous() { Ok(m.clone()) } else { cast(m, DType::U8) }).transpose()?;
    let qg = qw.reshape(&[b, hkv, group * sq, d])?;
    let go = gw.reshape(&[b, hkv, group * sq, dvw])?;
    let mut s = qg.matmul(&kw.t()?)?;
    let mut dp = go.matmul(&vw.t()?)?;
    let rows = b * hq * sq;
    if rows > 0 && skv > 0 {
        let f64_ = s.dtype() == DType::F64;
        let dev = Arc::clone(&storage(&s).dev);
        let (name, warp) = attn_rows_kernel("attn_grad", f64_, skv);
        let f = dev.builtin("train", kernels::TRAIN, &name)?;
        let rr = rows as i64;
        let (gv, ov) = (view(&gw), view(&ow));
        let mv = mw.as_ref().map(view);
        let null: u64 = 0;
        let (sqv, skvv, dvv, c, sc32) = (sq as i64, skv as i64, dvw as i64, i32::from(causal), scale as f32);
        let ss = attn_rows_storage(&mut s)?;
        let ds = attn_rows_storage(&mut dp)?;
        let mut l = dev.stream.launch_builder(&f);
        l.arg(&mut ss.buf).arg(&mut ds.buf).arg(&gv).arg(&ov);
        match &mv {
            Some(m) => l.arg(m),
            None => l.arg(&null),
        };
        if warp {
            l.arg(&rr);
        }
        l.arg(&sqv).arg(&skvv).arg(&dvv).arg(&c);
        if f64_ {
            l.arg(&scale);
        } else {
            l.arg(&sc32);
        }
        // SAFETY: `s` and `dp` hold `rows · skv` contiguous values, `go` and `o` `rows · dv`, the mask (if any)
        // `rows · skv` bytes, all in the same row order.
        unsafe { l.launch(if warp { warp_rows_grid(rows) } else { rows_grid(rows) }) }.map_err(launch_err)?;
    }
    let (p, ds) = (s, dp);
    let dv_ = p.t()?.matmul(&go)?;
    let dq = ds.matmul(&kw)?.reshape(&[b, hq, sq, d])?;
    let dk = ds.t()?.matmul(&qg)?;
    Ok((finish(dq, q.dtype())?, finish(dk, k.dtype())?, finish(dv_, v.dtype())?))
}

/// RMSNorm gradients `(dx, dw)` over the last dimension in one row kernel (plus `dw` as a ones-vector GEMM over the
/// rows, deterministic): `dx = r·g⊙w − r³·mean(g⊙w⊙x)·x`, `dw = Σ_rows g⊙x·r` with `r = 1/√(mean(x²) + ε)`.
pub(crate) fn rms_norm_backward(x: &Tensor, w: &Tensor, g: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
    let (xw, ww, gw) = (work(x)?, work(w)?, work(g)?);
    let d = *x.shape().last().unwrap_or(&1);
    let rows = x.elem_count() / d.max(1);
    let dev = Arc::clone(&storage(&xw).dev);
    let mut dx = dev.alloc(xw.dtype(), rows * d)?;
    let mut gxr = dev.alloc(xw.dtype(), rows * d)?;
    if rows * d > 0 && xw.dtype() == DType::F32 && d <= WARP_ROW_MAX {
        let f = dev.builtin("train", kernels::TRAIN, "rms_norm_bwd_warp_f32")?;
        let (xv, wv, gv, rr, dd) = (view(&xw), view(&ww), view(&gw), rows as i64, d as i64);
        let mut l = dev.stream.launch_builder(&f);
        l.arg(&xv).arg(&wv).arg(&gv).arg(&mut dx.buf).arg(&mut gxr.buf).arg(&rr).arg(&dd).arg(&eps);
        // SAFETY: x, g, dx, gxr hold `rows · d` contiguous elements, w holds `d`.
        unsafe { l.launch(warp_rows_grid(rows)) }.map_err(launch_err)?;
    } else if rows * d > 0 {
        let f = dev.builtin("train", kernels::TRAIN, &format!("rms_norm_bwd_{}", suffix(xw.dtype())))?;
        let (xv, wv, gv, dd) = (view(&xw), view(&ww), view(&gw), d as i64);
        let mut l = dev.stream.launch_builder(&f);
        l.arg(&xv).arg(&wv).arg(&gv).arg(&mut dx.buf).arg(&mut gxr.buf).arg(&dd).arg(&eps);
        // SAFETY: x, g, dx, gxr hold `rows · d` contiguous elements, w holds `d`.
        unsafe { l.launch(rows_grid(rows)) }.map_err(launch_err)?;
    }
    let gxr = Tensor::from_cuda(gxr, &[rows, d]);
    let ones = Tensor::ones(&[1, rows], xw.dtype(), &x.device())?;
    let dw = ones.matmul(&gxr)?.reshape(w.shape())?;
    Ok((finish(Tensor::from_cuda(dx, x.shape()), x.dtype())?, finish(dw, w.dtype())?))
}

/// SwiGLU gradients `(d gate, d up)` for `y = silu(gate) · up` in one elementwise kernel.
pub(crate) fn swiglu_backward(gate: &Tensor, up: &Tensor, g: &Tensor) -> Result<(Tensor, Tensor)> {
    let (aw, uw, gw) = (work(gate)?, work(up)?, work(g)?);
    let n = aw.elem_count();
    let dev = Arc::clone(&storage(&aw).dev);
    let mut da = dev.alloc(aw.dtype(), n)?;
    let mut du = dev.alloc(aw.dtype(), n)?;
    if n > 0 {
        let f = dev.builtin("train", kernels::TRAIN, &format!("swiglu_bwd_{}", suffix(aw.dtype())))?;
        let (gv, av, uv, nn) = (view(&gw), view(&aw), view(&uw), n as i64);
        let mut l = dev.stream.launch_builder(&f);
        l.arg(&gv).arg(&av).arg(&uv).arg(&mut da.buf).arg(&mut du.buf).arg(&nn);
        // The f32 kernel handles four elements per thread (16-byte accesses; grid-stride otherwise).
        let threads = if aw.dtype() == DType::F32 { n.div_ceil(4) } else { n };
        // SAFETY: five buffers of `n` contiguous elements.
        unsafe { l.launch(grid(threads)) }.map_err(launch_err)?;
    }
    Ok((
        finish(Tensor::from_cuda(da, gate.shape()), gate.dtype())?,
        finish(Tensor::from_cuda(du, up.shape()), up.dtype())?,
    ))
}
