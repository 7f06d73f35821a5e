//! [`QMatrix`]: a row-major block-quantized matrix and its fused GEMV / GEMM kernels.

use std::cell::RefCell;
use std::ops::Range;
use std::sync::Arc;

use rayon::prelude::*;

use super::blocks::dequantize_unchecked;
use super::kernels::{Acts, F32Act, Isa, Q8Act};
use super::{ActivationQuant, KernelPath, QuantType};
use crate::{Error, Result};

const QK: usize = QuantType::BLOCK_ELEMS;

/// Below this many bytes of weights (× activation vectors) a GEMV runs on the calling thread: the rayon
/// hand-off costs more than it saves. Measured with 2 threads of a warm pool (Xeon, AVX2 kernels): a 192×576
/// Q4_0 GEMV (62 KB, about 10 µs) already gains about 20% from the second thread. Retune with
/// `benches/` if the kernels change.
pub(super) const SEQ_THRESHOLD_BYTES: usize = 32 * 1024;
/// Tasks per thread of the row-chunked GEMV (load balancing against a straggling core).
pub(super) const TASKS_PER_THREAD: usize = 4;
/// Smallest row chunk of the parallel GEMV.
pub(super) const MIN_CHUNK_ROWS: usize = 16;
/// Largest m handled by the skinny (fused) kernel; larger m dequantise panels and call faer.
const SKINNY_MAX_M: usize = 8;
/// Rows of W dequantised per panel of the large-m matmul.
const PANEL_ROWS_MAX: usize = 256;
const PANEL_ROWS_MIN: usize = 32;
/// Below this many multiply-adds the large-m matmul runs on the calling thread.
const PANEL_PAR_MIN_FLOPS: u128 = 1 << 21;

/// An `n_rows × n_cols` row-major matrix stored in a ggml block format.
///
/// Each row is `n_cols / 32` blocks (so `n_cols` must be a multiple of 32) of [`QuantType::block_bytes`] bytes,
/// rows are contiguous: this is how GGUF stores a tensor of shape `[n_rows, n_cols]` (`ne = [n_cols, n_rows]`).
/// The bytes are either owned or shared zero-copy with e.g. an mmap ([`QMatrix::from_shared`]); cloning is
/// cheap (the bytes are reference-counted).
#[derive(Clone)]
pub struct QMatrix {
    ty: QuantType,
    n_rows: usize,
    n_cols: usize,
    row_bytes: usize,
    nbytes: usize,
    offset: usize,
    data: Arc<dyn AsRef<[u8]> + Send + Sync>,
}

impl std::fmt::Debug for QMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QMatrix")
            .field("ty", &self.ty)
            .field("n_rows", &self.n_rows)
            .field("n_cols", &self.n_cols)
            .field("nbytes", &self.nbytes)
            .field("offset", &self.offset)
            .finish_non_exhaustive()
    }
}

/// Validates the shape and returns (bytes per row, total bytes).
fn layout(op: &'static str, ty: QuantType, n_rows: usize, n_cols: usize) -> Result<(usize, usize)> {
    if !n_cols.is_multiple_of(QK) {
        return Err(Error::Quant {
            op,
            msg: format!("row length {n_cols} is not a multiple of the {} block size {QK}", ty.name()),
        });
    }
    let row_bytes = (n_cols / QK) * ty.block_bytes();
    let nbytes = row_bytes
        .checked_mul(n_rows)
        .ok_or_else(|| Error::Quant { op, msg: format!("{n_rows} rows of {row_bytes} bytes overflow usize") })?;
    // The dequantised matrix must be addressable too.
    n_rows
        .checked_mul(n_cols)
        .and_then(|n| n.checked_mul(4))
        .ok_or_else(|| Error::Quant { op, msg: format!("{n_rows} × {n_cols} elements overflow usize") })?;
    Ok((row_bytes, nbytes))
}

thread_local! {
    static PANEL: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Bytes ahead of the current row that the GEMV loops prefetch: 8 KiB (on a 2-core Xeon slice, Q4_1 LM head
/// streamed from DRAM: 47 % of the read ceiling with the 4-row kernel's former distance of one row group, 1.4 KiB;
/// 52 % at 8 KiB). `EFFLLM_QGEMV_PREFETCH` overrides it, for tuning on other machines.
fn prefetch_distance() -> usize {
    static D: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *D.get_or_init(|| std::env::var("EFFLLM_QGEMV_PREFETCH").ok().and_then(|v| v.parse().ok()).unwrap_or(8192))
}

impl QMatrix {
    /// Quantises a row-major `n_rows × n_cols` f32 matrix with ggml's reference quantiser.
    ///
    /// # Errors
    /// [`Error::Quant`] if `n_cols % 32 != 0`; [`Error::ElementCount`] if `data.len() != n_rows · n_cols`.
    pub fn quantize(ty: QuantType, n_rows: usize, n_cols: usize, data: &[f32]) -> Result<QMatrix> {
        const OP: &str = "QMatrix::quantize";
        let (row_bytes, nbytes) = layout(OP, ty, n_rows, n_cols)?;
        let expected = n_rows * n_cols;
        if data.len() != expected {
            return Err(Error::ElementCount { op: OP, shape: vec![n_rows, n_cols], expected, got: data.len() });
        }
        let mut bytes = vec![0u8; nbytes];
        if row_bytes > 0 {
            let work = |(x, o): (&[f32], &mut [u8])| super::quantize_row(ty, x, o);
            if nbytes < SEQ_THRESHOLD_BYTES {
                data.chunks_exact(n_cols).zip(bytes.chunks_exact_mut(row_bytes)).try_for_each(work)?;
            } else {
                crate::threads::install(|| {
                    data.par_chunks_exact(n_cols).zip(bytes.par_chunks_exact_mut(row_bytes)).try_for_each(work)
                })?;
            }
        }
        Self::from_bytes(ty, n_rows, n_cols, bytes)
    }

    /// Wraps owned block bytes (`n_rows` rows of `n_cols / 32` blocks each).
    ///
    /// # Errors
    /// [`Error::Quant`] if `n_cols % 32 != 0` or `bytes.len()` is not exactly the size of the matrix.
    pub fn from_bytes(ty: QuantType, n_rows: usize, n_cols: usize, bytes: Vec<u8>) -> Result<QMatrix> {
        const OP: &str = "QMatrix::from_bytes";
        let (row_bytes, nbytes) = layout(OP, ty, n_rows, n_cols)?;
        if bytes.len() != nbytes {
            return Err(Error::Quant {
                op: OP,
                msg: format!("{} bytes given, a {n_rows} × {n_cols} {} matrix needs {nbytes}", bytes.len(), ty.name()),
            });
        }
        Ok(QMatrix { ty, n_rows, n_cols, row_bytes, nbytes, offset: 0, data: Arc::new(bytes) })
    }

    /// A zero-copy view of the matrix stored at `byte_offset` in a shared buffer (e.g. an mmap'd GGUF file).
    /// The buffer may hold more bytes after the matrix; any alignment is fine.
    ///
    /// The buffer's `as_ref()` must return the same slice every time it is called (true of `Vec<u8>`, `Box<[u8]>`
    /// and memory maps); if it ever shrinks, the kernels return [`Error::Quant`] rather than reading out of
    /// bounds.
    ///
    /// # Errors
    /// [`Error::Quant`] if `n_cols % 32 != 0`, or if `byte_offset + nbytes` overflows or lies past the end of the
    /// buffer.
    pub fn from_shared(
        ty: QuantType,
        n_rows: usize,
        n_cols: usize,
        buf: Arc<dyn AsRef<[u8]> + Send + Sync>,
        byte_offset: usize,
    ) -> Result<QMatrix> {
        const OP: &str = "QMatrix::from_shared";
        let (row_bytes, nbytes) = layout(OP, ty, n_rows, n_cols)?;
        let len = (*buf).as_ref().len();
        let end = byte_offset.checked_add(nbytes).ok_or_else(|| Error::Quant {
            op: OP,
            msg: format!("offset {byte_offset} + {nbytes} bytes overflows usize"),
        })?;
        if end > len {
            return Err(Error::Quant {
                op: OP,
                msg: format!(
                    "bytes {byte_offset}..{end} of a {n_rows} × {n_cols} {} matrix lie past the end of a {len}-byte \
                     buffer",
                    ty.name()
                ),
            });
        }
        Ok(QMatrix { ty, n_rows, n_cols, row_bytes, nbytes, offset: byte_offset, data: buf })
    }

    /// The block format.
    pub fn quant_type(&self) -> QuantType {
        self.ty
    }

    /// Number of rows (outputs of [`QMatrix::gemv`]).
    pub fn n_rows(&self) -> usize {
        self.n_rows
    }

    /// Number of columns (the reduction length; a multiple of 32).
    pub fn n_cols(&self) -> usize {
        self.n_cols
    }

    /// Size of the block data in bytes.
    pub fn nbytes(&self) -> usize {
        self.nbytes
    }

    /// The block bytes of the whole matrix (empty if a shared buffer has shrunk since construction).
    pub fn as_bytes(&self) -> &[u8] {
        (*self.data).as_ref().get(self.offset..self.offset + self.nbytes).unwrap_or(&[])
    }

    /// The block bytes, or an error if a shared buffer no longer holds them.
    fn bytes(&self, op: &'static str) -> Result<&[u8]> {
        let b = self.as_bytes();
        if b.len() != self.nbytes {
            return Err(Error::Quant { op, msg: "the shared buffer no longer holds the matrix bytes".into() });
        }
        Ok(b)
    }

    /// The block bytes of row `r`.
    ///
    /// # Errors
    /// [`Error::IndexOutOfBounds`] if `r >= n_rows`.
    pub fn row_bytes(&self, r: usize) -> Result<&[u8]> {
        const OP: &str = "QMatrix::row_bytes";
        if r >= self.n_rows {
            return Err(Error::IndexOutOfBounds { op: OP, index: r, size: self.n_rows });
        }
        Ok(&self.bytes(OP)?[r * self.row_bytes..(r + 1) * self.row_bytes])
    }

    /// The whole matrix dequantised to f32, row-major (bit-exact with ggml / gguf-py). All zeros if a shared
    /// buffer no longer holds the bytes (see [`QMatrix::from_shared`]).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.n_rows * self.n_cols];
        let b = self.as_bytes();
        if b.len() == self.nbytes {
            dequantize_unchecked(self.ty, b, &mut out);
        }
        out
    }

    /// Dequantises rows `rows` into `out` (`rows.len() · n_cols` values, row-major).
    ///
    /// # Errors
    /// [`Error::IndexOutOfBounds`] if the range is reversed or ends past `n_rows`; [`Error::ElementCount`] if `out`
    /// has the wrong length.
    pub fn dequantize_rows(&self, rows: Range<usize>, out: &mut [f32]) -> Result<()> {
        const OP: &str = "QMatrix::dequantize_rows";
        if rows.start > rows.end || rows.end > self.n_rows {
            let index = if rows.start > rows.end { rows.start } else { rows.end };
            return Err(Error::IndexOutOfBounds { op: OP, index, size: self.n_rows });
        }
        let expected = rows.len() * self.n_cols;
        if out.len() != expected {
            return Err(Error::ElementCount { op: OP, shape: vec![rows.len(), self.n_cols], expected, got: out.len() });
        }
        let b = self.bytes(OP)?;
        dequantize_unchecked(self.ty, &b[rows.start * self.row_bytes..rows.end * self.row_bytes], out);
        Ok(())
    }

    /// `y = W x` with f32 activations, on the fastest kernel of this CPU.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if `x.len() != n_cols` or `y.len() != n_rows`.
    pub fn gemv(&self, x: &[f32], y: &mut [f32]) -> Result<()> {
        self.gemv_with(x, y, KernelPath::Auto, ActivationQuant::F32)
    }

    /// `y = W x` with an explicit kernel choice and activation treatment.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if `x.len() != n_cols` or `y.len() != n_rows`.
    pub fn gemv_with(&self, x: &[f32], y: &mut [f32], path: KernelPath, act: ActivationQuant) -> Result<()> {
        const OP: &str = "QMatrix::gemv";
        if x.len() != self.n_cols {
            return Err(Error::ShapeMismatch { op: OP, lhs: vec![self.n_rows, self.n_cols], rhs: vec![x.len()] });
        }
        if y.len() != self.n_rows {
            return Err(Error::ShapeMismatch { op: OP, lhs: vec![self.n_rows, self.n_cols], rhs: vec![y.len()] });
        }
        let bytes = self.bytes(OP)?;
        let acts = self.prepare(&[x], act);
        self.skinny(bytes, &acts, path.isa(), y);
        Ok(())
    }

    /// `Y = X · Wᵀ` for `X` row-major `m × n_cols` and `Y` row-major `m × n_rows`, with f32 activations on the
    /// fastest kernel.
    ///
    /// For `m ≤ 8` a skinny fused kernel streams W once and is bitwise equal to `m` calls of [`QMatrix::gemv`];
    /// for larger `m`, panels of up to 256 rows of W are dequantised into a per-thread scratch buffer and
    /// multiplied with faer (never the whole matrix at once).
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if `x.len() != m · n_cols` or `y.len() != m · n_rows`.
    pub fn matmul_t(&self, x: &[f32], m: usize, y: &mut [f32]) -> Result<()> {
        self.matmul_t_with(x, m, y, KernelPath::Auto, ActivationQuant::F32)
    }

    /// [`QMatrix::matmul_t`] with an explicit kernel choice and activation treatment.
    ///
    /// With [`ActivationQuant::Q8`] every `m` runs the fused kernel (in groups of 8 activation rows), as
    /// llama.cpp does; with [`ActivationQuant::F32`] and `m > 8`, the dequantise-panel + faer path runs whatever
    /// `path` says (the panels are dequantised by the scalar, bit-exact dequantiser).
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if `x.len() != m · n_cols` or `y.len() != m · n_rows`.
    pub fn matmul_t_with(
        &self,
        x: &[f32],
        m: usize,
        y: &mut [f32],
        path: KernelPath,
        act: ActivationQuant,
    ) -> Result<()> {
        const OP: &str = "QMatrix::matmul_t";
        let (k, n) = (self.n_cols, self.n_rows);
        if m.checked_mul(k) != Some(x.len()) {
            return Err(Error::ShapeMismatch { op: OP, lhs: vec![m, k], rhs: vec![x.len()] });
        }
        if m.checked_mul(n) != Some(y.len()) {
            return Err(Error::ShapeMismatch { op: OP, lhs: vec![m, n], rhs: vec![y.len()] });
        }
        let bytes = self.bytes(OP)?;
        if m == 0 || n == 0 {
            return Ok(());
        }
        if k == 0 {
            y.fill(0.0);
            return Ok(());
        }
        if m > SKINNY_MAX_M && act == ActivationQuant::F32 {
            self.matmul_panels(bytes, x, m, y);
            return Ok(());
        }
        let isa = path.isa();
        let mut yt = vec![0f32; SKINNY_MAX_M.min(m) * n];
        for (g, xg) in x.chunks(SKINNY_MAX_M * k).enumerate() {
            let mg = xg.len() / k;
            let rows: Vec<&[f32]> = xg.chunks_exact(k).collect();
            let acts = self.prepare(&rows, act);
            let yt = &mut yt[..mg * n];
            self.skinny(bytes, &acts, isa, yt);
            // yt is n × mg (row r holds the mg outputs of W row r); scatter into Y (m × n).
            for (r, outs) in yt.chunks_exact(mg).enumerate() {
                for (i, &v) in outs.iter().enumerate() {
                    y[(g * SKINNY_MAX_M + i) * n + r] = v;
                }
            }
        }
        Ok(())
    }

    /// `Y_i = X · W_iᵀ` for several matrices that share the input (`Q`, `K`, `V`; gate and up): one activation
    /// preparation and one parallel pass over the rows of all of them, for `m ≤ 8` rows of `x` (`m · k`
    /// values). Every output equals [`QMatrix::matmul_t_with`]'s bit for bit (the same row kernel); the point is
    /// one dispatch instead of several small ones in decode.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if the matrices differ in `n_cols` or quantization type, `x.len()` is not a
    /// multiple of `n_cols` or `m` is not in `1..=8`.
    pub fn matmul_t_many(
        mats: &[&QMatrix],
        x: &[f32],
        path: KernelPath,
        act: ActivationQuant,
    ) -> Result<Vec<Vec<f32>>> {
        const OP: &str = "QMatrix::matmul_t_many";
        let Some(first) = mats.first() else { return Ok(Vec::new()) };
        let k = first.n_cols;
        if let Some(bad) = mats.iter().find(|w| w.n_cols != k || w.ty != first.ty) {
            return Err(Error::ShapeMismatch { op: OP, lhs: vec![first.n_rows, k], rhs: vec![bad.n_rows, bad.n_cols] });
        }
        let m = x.len().checked_div(k).unwrap_or(0);
        if k == 0 || m * k != x.len() || !(1..=SKINNY_MAX_M).contains(&m) {
            return Err(Error::ShapeMismatch { op: OP, lhs: vec![m, k], rhs: vec![x.len()] });
        }
        let rows: Vec<&[f32]> = x.chunks_exact(k).collect();
        let acts = first.prepare(&rows, act);
        let isa = path.isa();
        // Row-major n × m scratch per matrix, as in `skinny`.
        let mut scratch: Vec<Vec<f32>> = mats.iter().map(|w| vec![0f32; w.n_rows * m]).collect();
        let total_rows: usize = mats.iter().map(|w| w.n_rows).sum();
        let t = crate::threads::num_threads().max(1);
        let chunk = total_rows.div_ceil(t * TASKS_PER_THREAD).max(MIN_CHUNK_ROWS).next_multiple_of(8);
        let mut tasks: Vec<(&QMatrix, &[u8], &mut [f32])> = Vec::new();
        for (w, out) in mats.iter().zip(scratch.iter_mut()) {
            let rb = w.row_bytes;
            let bytes = w.bytes(OP)?;
            if rb == 0 {
                continue;
            }
            for (wb, o) in bytes.chunks(chunk * rb).zip(out.chunks_mut(chunk * m)) {
                tasks.push((w, wb, o));
            }
        }
        let run = |(w, wb, o): (&QMatrix, &[u8], &mut [f32])| w.rows_outputs(wb, &acts, isa, o);
        let bytes_total: usize = mats.iter().map(|w| w.nbytes).sum();
        if bytes_total.saturating_mul(m) < SEQ_THRESHOLD_BYTES {
            tasks.into_iter().for_each(run);
        } else {
            crate::threads::install(|| tasks.into_par_iter().for_each(run));
        }
        Ok(scratch
            .into_iter()
            .zip(mats)
            .map(|(yt, w)| {
                let n = w.n_rows;
                let mut y = vec![0f32; m * n];
                for (r, outs) in yt.chunks_exact(m).enumerate() {
                    for (i, &v) in outs.iter().enumerate() {
                        y[i * n + r] = v;
                    }
                }
                y
            })
            .collect())
    }

    fn prepare<'a>(&self, xs: &[&'a [f32]], act: ActivationQuant) -> Acts<'a> {
        match act {
            ActivationQuant::F32 => Acts::F32(xs.iter().map(|x| F32Act::new(self.ty, x)).collect()),
            ActivationQuant::Q8 => Acts::Q8(xs.iter().map(|x| Q8Act::new(x)).collect()),
        }
    }

    /// The outputs of consecutive W rows (`rows`, whole rows) against `acts`, row r's outputs at
    /// `out[r·m..(r + 1)·m]`. With one activation vector, four rows go through a 4-row kernel where one exists
    /// (bitwise equal to the one-row kernel).
    fn rows_outputs(&self, rows: &[u8], acts: &Acts<'_>, isa: Isa, out: &mut [f32]) {
        let (rb, mv) = (self.row_bytes, acts.len());
        let (mut rows, mut out) = (rows, out);
        if mv == 1 {
            // The 4-row kernel prefetches each row's bytes at the same position a whole number of row groups ahead,
            // about `prefetch_distance()` bytes.
            let group = (4 * rb).max(1);
            let ahead4 = group * (prefetch_distance() / group).max(1);
            while rows.len() >= 4 * rb {
                let r4 = [&rows[..rb], &rows[rb..2 * rb], &rows[2 * rb..3 * rb], &rows[3 * rb..4 * rb]];
                let Some(y) = acts.dot4_single(self.ty, isa, r4, ahead4) else { break };
                out[..4].copy_from_slice(&y);
                rows = &rows[4 * rb..];
                out = &mut out[4..];
            }
        }
        // The one-row kernel reads the rows as one sequential stream; the hardware prefetchers alone left it at a
        // third of the read ceiling on a Xeon whose rows streamed from DRAM (Q8_0 LM head: 38 %; 54-58 % with
        // the stream prefetched 4-8 KiB ahead), so the stream is also prefetched in software, into L2 (more lines
        // in flight than L1's miss buffers allow: +17-20 % on the same LM head).
        let ahead = prefetch_distance();
        for (i, (row, o)) in rows.chunks_exact(rb).zip(out.chunks_exact_mut(mv)).enumerate() {
            crate::cpu::prefetch_span_l2(rows, i * rb + ahead, rb);
            self.row_outputs(row, acts, isa, o);
        }
    }

    /// The outputs of one W row against every activation vector of `acts` (at most 8), in `out`.
    #[inline]
    fn row_outputs(&self, row: &[u8], acts: &Acts<'_>, isa: Isa, out: &mut [f32]) {
        let ty = self.ty;
        macro_rules! put {
            ($m:literal, $first:expr, $at:expr) => {{
                let v = acts.dot::<$m>(ty, isa, row, $first);
                out[$at..$at + $m].copy_from_slice(&v);
            }};
        }
        match out.len() {
            1 => put!(1, 0, 0),
            2 => put!(2, 0, 0),
            3 => put!(3, 0, 0),
            4 => put!(4, 0, 0),
            5 => {
                put!(4, 0, 0);
                put!(1, 4, 4)
            }
            6 => {
                put!(4, 0, 0);
                put!(2, 4, 4)
            }
            7 => {
                put!(4, 0, 0);
                put!(3, 4, 4)
            }
            _ => {
                put!(4, 0, 0);
                put!(4, 4, 4)
            }
        }
    }

    /// Fused kernel over all rows: `out` is `n_rows × acts.len()` (row r's outputs contiguous). Parallel over
    /// chunks of rows above a size threshold; each output is computed by one call of the same row kernel, so the
    /// result does not depend on the thread count or chunking.
    fn skinny(&self, bytes: &[u8], acts: &Acts<'_>, isa: Isa, out: &mut [f32]) {
        let mv = acts.len();
        debug_assert!((1..=SKINNY_MAX_M).contains(&mv) && out.len() == self.n_rows * mv);
        if self.n_rows == 0 {
            return;
        }
        if self.row_bytes == 0 {
            out.fill(0.0);
            return;
        }
        let rb = self.row_bytes;
        let run = |rows: &[u8], out: &mut [f32]| self.rows_outputs(rows, acts, isa, out);
        if self.nbytes.saturating_mul(mv) < SEQ_THRESHOLD_BYTES {
            run(bytes, out);
            return;
        }
        crate::threads::install(|| {
            let t = rayon::current_num_threads().max(1);
            let chunk = self.n_rows.div_ceil(t * TASKS_PER_THREAD).max(MIN_CHUNK_ROWS).next_multiple_of(8);
            bytes.par_chunks(chunk * rb).zip(out.par_chunks_mut(chunk * mv)).for_each(|(w, o)| run(w, o));
        });
    }

    /// Large-m `Y = X · Wᵀ`: panels of W rows dequantised per thread, multiplied with faer.
    fn matmul_panels(&self, bytes: &[u8], x: &[f32], m: usize, y: &mut [f32]) {
        let flops = (m as u128) * (self.n_rows as u128) * (self.n_cols as u128);
        if flops < PANEL_PAR_MIN_FLOPS {
            self.matmul_panels_on(bytes, x, m, y, 1);
        } else {
            crate::threads::install(|| self.matmul_panels_on(bytes, x, m, y, rayon::current_num_threads().max(1)));
        }
    }

    fn matmul_panels_on(&self, bytes: &[u8], x: &[f32], m: usize, y: &mut [f32], threads: usize) {
        use faer::linalg::matmul::matmul;
        use faer::{Accum, MatMut, MatRef, Par};

        let (k, n, rb) = (self.n_cols, self.n_rows, self.row_bytes);
        let panel = n.div_ceil(2 * threads).clamp(PANEL_ROWS_MIN, PANEL_ROWS_MAX).next_multiple_of(16);
        let xm = MatRef::from_row_major_slice(x, m, k);
        let mut panels = Vec::with_capacity(n.div_ceil(panel));
        let mut rest = MatMut::from_row_major_slice_mut(y, m, n);
        let mut r0 = 0;
        while r0 < n {
            let p = panel.min(n - r0);
            let (head, tail) = rest.split_at_col_mut(p);
            panels.push((r0, head));
            rest = tail;
            r0 += p;
        }
        let work = |(r0, yp): (usize, MatMut<'_, f32>)| {
            let p = yp.ncols();
            PANEL.with(|s| {
                let mut s = s.borrow_mut();
                if s.len() < p * k {
                    s.resize(p * k, 0.0);
                }
                let wp = &mut s[..p * k];
                dequantize_unchecked(self.ty, &bytes[r0 * rb..(r0 + p) * rb], wp);
                let wm = MatRef::from_row_major_slice(&*wp, p, k);
                matmul(yp, Accum::Replace, xm, wm.transpose(), 1.0f32, Par::Seq);
            });
        };
        if threads == 1 || panels.len() == 1 {
            panels.into_iter().for_each(work);
        } else {
            panels.into_par_iter().for_each(work);
        }
    }
}
