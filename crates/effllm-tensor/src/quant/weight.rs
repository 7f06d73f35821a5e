//! [`QWeight`]: a quantized weight matrix on any device, and `Tensor::linear_q`.

use super::{ActivationQuant, KernelPath, QMatrix, QuantType};
use crate::{DType, Device, Error, Result, Tensor};

/// A quantized `n_rows × n_cols` weight (ggml blocks, row-major) on the CPU or a CUDA device.
///
/// On the CPU it is a [`QMatrix`] (zero-copy over e.g. a memory-mapped GGUF); on a GPU the same bytes live in a
/// u8 tensor and the CUDA kernels read the blocks directly. [`Tensor::linear_q`] multiplies activations by it.
#[derive(Clone, Debug)]
pub struct QWeight {
    matrix: QMatrix,
    device_blocks: Option<Tensor>,
    /// The CPU GEMV layout's copy (Q4_1 or Q8_0 with the AVX-512 kernels), when asked for.
    host_split: Option<std::sync::Arc<super::split::SplitRows>>,
    layout: BlockLayout,
    activation: ActivationQuant,
}

/// How a [`QWeight`]'s kernels read its blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BlockLayout {
    /// The ggml bytes unchanged: rows of blocks in order (the host matrix; what [`QWeight::to_device`] uploads, and
    /// what the fused decode kernels and [`QWeight::device_blocks`] read).
    #[default]
    Rows,
    /// A layout for one-row GEMVs (see [`QWeight::with_gemv_layout`]): on CUDA the [tile layout](super::tiles)
    /// replaces the device rows; on the CPU a Q4_1 or Q8_0 matrix gets a copy with each row's scales split from its
    /// quants (where the AVX-512 kernels run; otherwise the CPU reads the ggml rows).
    Gemv,
}

impl QWeight {
    /// A CPU weight over `matrix`.
    pub fn new(matrix: QMatrix) -> QWeight {
        QWeight {
            matrix,
            device_blocks: None,
            host_split: None,
            layout: BlockLayout::Rows,
            activation: ActivationQuant::F32,
        }
    }

    /// The same weight, multiplied with activations treated as `act`: [`ActivationQuant::Q8`] quantises each
    /// activation row per 32-block and uses integer dot products, as llama.cpp does (faster, and llama.cpp's
    /// numerics); [`ActivationQuant::F32`] (the default) keeps activations exact. On CUDA, Q8 applies to the
    /// GEMV (at most [`crate::SKINNY_MAX_ROWS`] rows; `dp4a` kernels); longer inputs take f32 activations.
    pub fn with_activation_quant(mut self, act: ActivationQuant) -> QWeight {
        self.activation = act;
        self
    }

    /// How the kernels treat activations.
    pub fn activation_quant(&self) -> ActivationQuant {
        self.activation
    }

    /// The block format.
    pub fn quant_type(&self) -> QuantType {
        self.matrix.quant_type()
    }

    /// Output features (rows).
    pub fn n_rows(&self) -> usize {
        self.matrix.n_rows()
    }

    /// Input features (columns).
    pub fn n_cols(&self) -> usize {
        self.matrix.n_cols()
    }

    /// Where the blocks live.
    pub fn device(&self) -> Device {
        self.device_blocks.as_ref().map_or(Device::Cpu, |t| t.device())
    }

    /// The device copy of the blocks (a contiguous u8 tensor of the matrix's bytes, rows of blocks in order), or
    /// `None` on the CPU or in the [`BlockLayout::Gemv`] layout: what a technique's own CUDA kernel passes to
    /// read the blocks directly.
    pub fn device_blocks(&self) -> Option<&Tensor> {
        self.device_blocks.as_ref().filter(|_| self.layout == BlockLayout::Rows)
    }

    /// The layout the weight's kernels read ([`BlockLayout::Rows`] unless [`QWeight::with_gemv_layout`] asked for
    /// [`BlockLayout::Gemv`]).
    pub fn block_layout(&self) -> BlockLayout {
        self.layout
    }

    /// The same weight laid out for one-row GEMVs ([`BlockLayout::Gemv`]): for a large matrix that is multiplied
    /// through [`Tensor::linear_q`] one activation row at a time, such as an LM head in decode. The bytes of every
    /// block stay the ggml bytes, only placed elsewhere.
    ///
    /// **On CUDA** the device copy is regrouped into the [tile layout](super::tiles), which replaces the ggml rows
    /// (padded to whole tiles of 16 rows and an even number of blocks per row; no second copy). `linear_q` then
    /// reads it with every warp load one contiguous 512-byte span.
    /// - Up to [`crate::SKINNY_MAX_ROWS`] activation rows take a GEMV kernel made for the layout (f32 activations
    ///   always: [`ActivationQuant::Q8`] does not apply to it); longer inputs, and rows wider than about 10,000
    ///   columns, dequantize it and call cuBLAS.
    /// - On Hopper that kernel is a programmatic dependent launch: it starts reading its tiles while the kernel
    ///   before it finishes, and waits for that kernel before it reads the activations or writes its output. (Only
    ///   this layout can: its device copy is private to the weight, whereas ggml rows handed in through
    ///   [`QWeight::with_device_blocks`] may be written by an earlier kernel.)
    /// - On an H100 the SmolLM2 LM head (49,152 × 576) streams from DRAM at 69.5-71 % (Q4_1) and 79-80 % (Q8_0) of
    ///   copy bandwidth this way in a stream of calls, against 41-42 % and 56 % in the ggml rows
    ///   (`docs/benchmarks-gpu.md`).
    /// - [`QWeight::device_blocks`] is `None` in this layout, so code that reads the ggml rows on the device does
    ///   not apply: a model of `effllm-model` with such a weight loses its fused decode step (its kernels read ggml
    ///   rows) and runs op by op, which is slower. Keep a CUDA model's weights in [`BlockLayout::Rows`].
    ///
    /// **On the CPU** a Q4_1 or Q8_0 weight gets a second host copy with each row's f16 scales split from its quants,
    /// where the AVX-512 kernels run. `linear_q` reads that copy for one f32 activation row; the ggml matrix stays
    /// for everything else (more rows, Q8 activations, embedding lookups). On the Xeon slice of `docs/benchmarks.md`
    /// the SmolLM2 LM head streams a fifth to a quarter faster this way in Q4_1 (see there for Q8_0). Q4_0 and other
    /// CPUs read the ggml rows as before. (One-row results then differ in the last bits from the 2-8-row skinny
    /// kernel's, which reads the rows.)
    ///
    /// [`QWeight::to_device`] keeps the layout (built anew for the new device).
    ///
    /// # Errors
    /// Allocation or copy failures on the device.
    pub fn with_gemv_layout(&self) -> Result<QWeight> {
        if self.layout == BlockLayout::Gemv {
            return Ok(self.clone());
        }
        self.placed(&self.device(), BlockLayout::Gemv)
    }

    /// The same weight with its blocks on `device` in `layout`: the one place that builds the copies a layout
    /// needs (nothing on the CPU in [`BlockLayout::Rows`]; the split-scale copy on the CPU in
    /// [`BlockLayout::Gemv`]; the rows or the tiles uploaded to a CUDA device).
    fn placed(&self, device: &Device, layout: BlockLayout) -> Result<QWeight> {
        let (device_blocks, host_split) = match (device, layout) {
            (Device::Cpu, BlockLayout::Rows) => (None, None),
            (Device::Cpu, BlockLayout::Gemv) => {
                (None, super::split::SplitRows::new(&self.matrix).map(std::sync::Arc::new))
            }
            (Device::Cuda(_), _) => {
                let bytes = match layout {
                    BlockLayout::Rows => self.matrix.as_bytes().to_vec(),
                    BlockLayout::Gemv => super::tiles::gemv_tiles(&self.matrix),
                };
                let n = bytes.len();
                (Some(Tensor::from_vec(bytes, &[n], device)?), None)
            }
        };
        Ok(QWeight { matrix: self.matrix.clone(), device_blocks, host_split, layout, activation: self.activation })
    }

    /// The CPU split-scale copy, where `linear_q` reads it: one row of f32 activations.
    fn split_for(&self, m: usize) -> Option<&super::split::SplitRows> {
        self.host_split.as_deref().filter(|_| m == 1 && self.activation == ActivationQuant::F32)
    }

    /// The host copy of the blocks.
    pub fn matrix(&self) -> &QMatrix {
        &self.matrix
    }

    /// The same weight with its blocks on `device` (uploaded once; the host copy stays shared). A weight in the
    /// [`BlockLayout::Gemv`] layout keeps it on another CUDA device.
    pub fn to_device(&self, device: &Device) -> Result<QWeight> {
        if self.device() == *device {
            return Ok(self.clone());
        }
        self.placed(device, self.layout)
    }
}

impl QWeight {
    /// The same weight with `blocks` as its device copy: a u8 tensor of exactly the matrix's bytes on a CUDA
    /// device, e.g. fresh from [`crate::offload::CopyStream::upload`] (offloaded weights streamed per layer).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `blocks` is not a contiguous u8 tensor of `nbytes` elements on a CUDA device.
    pub fn with_device_blocks(&self, blocks: Tensor) -> Result<QWeight> {
        const OP: &str = "QWeight::with_device_blocks";
        if blocks.dtype() != DType::U8 || blocks.elem_count() != self.matrix.nbytes() || !blocks.is_contiguous() {
            return Err(Error::InvalidArgument {
                op: OP,
                msg: format!(
                    "expected a contiguous u8 tensor of {} bytes, got {} {:?}",
                    self.matrix.nbytes(),
                    blocks.dtype(),
                    blocks.shape()
                ),
            });
        }
        if !matches!(blocks.device(), Device::Cuda(_)) {
            return Err(Error::InvalidArgument {
                op: OP,
                msg: format!("blocks on {}, not a CUDA device", blocks.device()),
            });
        }
        Ok(QWeight {
            matrix: self.matrix.clone(),
            device_blocks: Some(blocks),
            host_split: None,
            layout: BlockLayout::Rows,
            activation: self.activation,
        })
    }
}

impl From<QMatrix> for QWeight {
    fn from(m: QMatrix) -> QWeight {
        QWeight::new(m)
    }
}

impl Tensor {
    /// `self · Wᵀ` for a quantized weight `W` = `[n, k]`: `[.., k] → [.., n]`, computed in f32 from the blocks
    /// without materialising W as f32 on the CPU (fused GEMV / skinny GEMM for up to 8 rows, dequantized panels
    /// beyond; one f32 row of a weight in the [`BlockLayout::Gemv`] layout reads its split-scale copy), and on CUDA
    /// with the fused GEMV kernel (≤ 8 rows; tile kernels in the GEMV layout) or dequantize + cuBLAS. The result has
    /// `self`'s dtype.
    pub fn linear_q(&self, w: &QWeight) -> Result<Tensor> {
        const OP: &str = "linear_q";
        // A tracked input records its gradient (the weight gets none); the recorded forward comes back here with
        // recording off.
        if self.is_tracked() && crate::autograd::is_grad_enabled() {
            return crate::autograd::linear_q(self, w);
        }
        self.check_float(OP)?;
        if self.device() != w.device() {
            return Err(Error::DeviceMismatch { op: OP, lhs: self.device(), rhs: w.device() });
        }
        let (n, k) = (w.n_rows(), w.n_cols());
        if self.rank() == 0 || self.shape()[self.rank() - 1] != k {
            return Err(Error::ShapeMismatch { op: OP, lhs: self.shape().to_vec(), rhs: vec![n, k] });
        }
        let m = self.elem_count() / k.max(1);
        let mut shape = self.shape().to_vec();
        let last = shape.len() - 1;
        shape[last] = n;
        if k == 0 {
            // A product over an empty inner dimension: zeros.
            return Tensor::zeros(&shape, self.dtype(), &self.device());
        }
        #[cfg(feature = "cuda")]
        if let Some(blocks) = &w.device_blocks {
            let y = match w.layout {
                BlockLayout::Rows => crate::cuda::ops::qlinear(self, blocks, w.quant_type(), n, k, w.activation)?,
                BlockLayout::Gemv => crate::cuda::ops::qlinear_tiles(self, blocks, w.quant_type(), n, k)?,
            };
            return y.reshape(&shape)?.to_dtype(self.dtype());
        }
        let x = self.to_dtype(DType::F32)?.contiguous()?.to_vec::<f32>()?;
        let mut y = vec![0f32; m * n];
        match w.split_for(m) {
            Some(split) => split.gemv(&x, &mut y),
            None => w.matrix.matmul_t_with(&x, m, &mut y, KernelPath::Auto, w.activation)?,
        }
        Tensor::from_vec(y, &shape, &Device::Cpu)?.to_dtype(self.dtype())
    }

    /// `[self · W_iᵀ]` for several quantized weights sharing this input (e.g. a layer's Q, K and V). On the CPU,
    /// for at most 8 rows and weights of one type and width, all rows run in one parallel pass
    /// ([`QMatrix::matmul_t_many`]) with outputs bitwise equal to separate [`Tensor::linear_q`] calls; otherwise
    /// (CUDA, more rows, mixed weights) it is exactly those calls.
    pub fn linear_q_many(&self, ws: &[&QWeight]) -> Result<Vec<Tensor>> {
        const OP: &str = "linear_q_many";
        if self.is_tracked() && crate::autograd::is_grad_enabled() {
            return ws.iter().map(|w| crate::autograd::linear_q(self, w)).collect();
        }
        self.check_float(OP)?;
        let Some(first) = ws.first() else { return Ok(Vec::new()) };
        let k = first.n_cols();
        let m = self.elem_count().checked_div(k).unwrap_or(0);
        let fusable = self.device().is_cpu()
            && (1..=8).contains(&m)
            && self.rank() >= 1
            && self.shape()[self.rank() - 1] == k
            && ws.iter().all(|w| {
                // A one-row product of a weight with the CPU GEMV layout's copy reads that copy in `linear_q`.
                w.device().is_cpu()
                    && w.split_for(m).is_none()
                    && w.n_cols() == k
                    && w.quant_type() == first.quant_type()
                    && w.activation == first.activation
            });
        if !fusable {
            return ws.iter().map(|w| self.linear_q(w)).collect();
        }
        let x = self.to_dtype(DType::F32)?.contiguous()?.to_vec::<f32>()?;
        let mats: Vec<&QMatrix> = ws.iter().map(|w| &w.matrix).collect();
        let ys = QMatrix::matmul_t_many(&mats, &x, KernelPath::Auto, first.activation)?;
        ys.into_iter()
            .zip(ws)
            .map(|(y, w)| {
                let mut shape = self.shape().to_vec();
                let last = shape.len() - 1;
                shape[last] = w.n_rows();
                Tensor::from_vec(y, &shape, &Device::Cpu)?.to_dtype(self.dtype())
            })
            .collect()
    }
}
