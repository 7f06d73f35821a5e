//! Weight containers: [`Linear`] (dense tensor or quantized blocks) and [`Embedding`], plus loading helpers.

use std::sync::Arc;

use effllm_gguf::{GgmlType, GgufFile};
use effllm_tensor::quant::{QMatrix, QWeight, QuantType};
use effllm_tensor::{DType, Device, Tensor};

use crate::error::{ModelError, Result};

/// How a loader keeps the 2-D weights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WeightFormat {
    /// Keep Q4_0/Q4_1/Q8_0 blocks as they are in the file (zero-copy over the memory map on the CPU) and run the
    /// fused dequantizing kernels; float tensors stay in their stored dtype converted to f32.
    #[default]
    Quantized,
    /// Dequantize every weight to f32 at load.
    F32,
    /// Dequantize every weight to bf16 at load (activations stay f32; each matmul converts).
    BF16,
}

/// A linear map `y = x Wᵀ` with `W = [out, in]`.
#[derive(Clone, Debug)]
pub enum Linear {
    /// A dense weight tensor `[out, in]` (f32, bf16 or f16).
    Dense(Tensor),
    /// ggml blocks, multiplied by the fused kernels without materialising W.
    Quant(QWeight),
}

impl Linear {
    /// `[.., in] → [.., out]`; the result has `x`'s dtype.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Linear::Dense(w) if w.dtype() == x.dtype() => x.linear(w)?,
            // Training with 16-bit compute copies of f32 masters: one op that keeps the GEMM's f32 accumulator as the
            // result (two casts fewer per map and step than the composite below, and one rounding fewer).
            Linear::Dense(w)
                if x.is_tracked() && x.dtype() == DType::F32 && matches!(w.dtype(), DType::BF16 | DType::F16) =>
            {
                x.linear_mixed(w)?
            }
            Linear::Dense(w) => x.to_dtype(w.dtype())?.linear(w)?.to_dtype(x.dtype())?,
            Linear::Quant(q) if x.is_tracked() => effllm_tensor::autograd::linear_q(x, q)?,
            Linear::Quant(q) => x.linear_q(q)?,
        })
    }

    /// `[x Wᵢᵀ]` for several maps sharing the input: quantized weights of one type run in one pass
    /// (`Tensor::linear_q_many`, bitwise equal to separate calls); anything else is separate calls.
    pub fn forward_many(maps: &[&Linear], x: &Tensor) -> Result<Vec<Tensor>> {
        let quant: Option<Vec<&QWeight>> =
            maps.iter().map(|l| if let Linear::Quant(q) = l { Some(q) } else { None }).collect();
        match quant {
            Some(qs) if !x.is_tracked() => Ok(x.linear_q_many(&qs)?),
            Some(_) => maps.iter().map(|l| l.forward(x)).collect(),
            None => maps.iter().map(|l| l.forward(x)).collect(),
        }
    }

    /// The map with its dense weight marked as a requires-grad leaf (training). Quantized blocks are not
    /// trainable: a typed `NotDifferentiable` error (load with `WeightFormat::F32` to train).
    pub fn requires_grad(&self) -> Result<Linear> {
        match self {
            Linear::Dense(w) => Ok(Linear::Dense(w.clone().requires_grad())),
            Linear::Quant(_) => Err(quantized_not_trainable()),
        }
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        match self {
            Linear::Dense(w) => w.shape()[0],
            Linear::Quant(q) => q.n_rows(),
        }
    }

    /// Input features.
    pub fn in_features(&self) -> usize {
        match self {
            Linear::Dense(w) => w.shape()[1],
            Linear::Quant(q) => q.n_cols(),
        }
    }

    /// Where the weight lives.
    pub fn device(&self) -> Device {
        match self {
            Linear::Dense(w) => w.device(),
            Linear::Quant(q) => q.device(),
        }
    }

    /// Bytes the weight occupies.
    pub fn nbytes(&self) -> usize {
        match self {
            Linear::Dense(w) => w.elem_count() * w.dtype().size_in_bytes(),
            Linear::Quant(q) => q.matrix().nbytes(),
        }
    }

    /// The weight as a dense f32 tensor `[out, in]` on the weight's device.
    pub fn to_dense_f32(&self) -> Result<Tensor> {
        Ok(match self {
            Linear::Dense(w) => w.to_dtype(DType::F32)?,
            Linear::Quant(q) => {
                let m = q.matrix();
                Tensor::from_vec(m.dequantize(), &[m.n_rows(), m.n_cols()], &Device::Cpu)?.to_device(&q.device())?
            }
        })
    }

    /// The same map restricted to output rows `rows` (in that order): quantized weights stay quantized (rows are
    /// whole blocks).
    pub fn select_rows(&self, rows: &[u32]) -> Result<Linear> {
        match self {
            Linear::Dense(w) => {
                let ids = Tensor::from_slice(rows, &[rows.len()], &w.device())?;
                Ok(Linear::Dense(w.index_select(0, &ids)?))
            }
            Linear::Quant(q) => {
                let m = q.matrix();
                let mut bytes = Vec::with_capacity(rows.len() * m.row_bytes(0).map_or(0, <[u8]>::len));
                for &r in rows {
                    bytes.extend_from_slice(m.row_bytes(r as usize)?);
                }
                let sub = QMatrix::from_bytes(m.quant_type(), rows.len(), m.n_cols(), bytes)?;
                Ok(Linear::Quant(QWeight::new(sub).to_device(&q.device())?))
            }
        }
    }

    /// The same map restricted to input columns `cols` (in that order), as a dense f32 weight (a column subset of
    /// a block-quantized matrix is not block-aligned).
    pub fn select_cols(&self, cols: &[u32]) -> Result<Linear> {
        let w = self.to_dense_f32()?;
        let ids = Tensor::from_slice(cols, &[cols.len()], &w.device())?;
        Ok(Linear::Dense(w.index_select(1, &ids)?.contiguous()?))
    }

    /// The weight on `device` (quantized blocks are uploaded as blocks).
    pub fn to_device(&self, device: &Device) -> Result<Linear> {
        Ok(match self {
            Linear::Dense(w) => Linear::Dense(w.to_device(device)?),
            Linear::Quant(q) => Linear::Quant(q.to_device(device)?),
        })
    }
}

/// The error for asking a gradient of quantized blocks.
pub(crate) fn quantized_not_trainable() -> ModelError {
    effllm_tensor::Error::NotDifferentiable {
        op: "linear_q",
        reason: "quantized weights have no gradient; load the model with WeightFormat::F32 to train".into(),
    }
    .into()
}

/// A token embedding table `[vocab, d]`.
#[derive(Clone, Debug)]
pub enum Embedding {
    /// Dense rows.
    Dense(Tensor),
    /// Quantized rows (each row whole blocks), dequantized on lookup.
    Quant(QWeight),
}

impl Embedding {
    /// Rows for `ids` as an f32 tensor `[ids.len(), d]` on `device`. Ids must be checked by the caller.
    pub fn lookup(&self, ids: &[u32], device: &Device) -> Result<Tensor> {
        match self {
            Embedding::Dense(t) => {
                let idx = Tensor::from_slice(ids, &[ids.len()], &t.device())?;
                Ok(t.index_select(0, &idx)?.to_dtype(DType::F32)?.to_device(device)?)
            }
            Embedding::Quant(q) => {
                let m = q.matrix();
                let d = m.n_cols();
                let mut out = vec![0f32; ids.len() * d];
                for (row, &id) in out.chunks_mut(d).zip(ids) {
                    m.dequantize_rows(id as usize..id as usize + 1, row)?;
                }
                Ok(Tensor::from_vec(out, &[ids.len(), d], device)?)
            }
        }
    }

    /// The table as a linear map (the tied LM head).
    pub fn as_linear(&self) -> Linear {
        match self {
            Embedding::Dense(t) => Linear::Dense(t.clone()),
            Embedding::Quant(q) => Linear::Quant(q.clone()),
        }
    }

    /// Number of rows.
    pub fn vocab(&self) -> usize {
        match self {
            Embedding::Dense(t) => t.shape()[0],
            Embedding::Quant(q) => q.n_rows(),
        }
    }
}

/// A GGUF tensor as f32 values (any supported type), checked against `expected` (row-major).
pub(crate) fn gguf_f32(f: &GgufFile, name: &str, expected: &[usize]) -> Result<Vec<f32>> {
    let view = f.tensor(name).ok_or_else(|| ModelError::MissingTensor(name.into()))?;
    check_shape(name, &view.shape(), expected)?;
    let bytes = view.bytes;
    let n = expected.iter().product::<usize>();
    let out: Vec<f32> = match view.ty {
        GgmlType::F32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        GgmlType::F16 => bytes.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        GgmlType::BF16 => bytes.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        ty => match QuantType::from_ggml_type_id(ty.id()) {
            Some(qt) => {
                let cols = *expected.last().unwrap_or(&1);
                QMatrix::from_bytes(qt, n / cols.max(1), cols, bytes.to_vec())?.dequantize()
            }
            None => return Err(ModelError::UnsupportedWeightType { name: name.into(), ty: ty.name().into() }),
        },
    };
    if out.len() != n {
        return Err(ModelError::BadTensorShape { name: name.into(), found: vec![out.len()], expected: vec![n] });
    }
    Ok(out)
}

pub(crate) fn check_shape(name: &str, found: &[usize], expected: &[usize]) -> Result<()> {
    if found != expected {
        return Err(ModelError::BadTensorShape {
            name: name.into(),
            found: found.to_vec(),
            expected: expected.to_vec(),
        });
    }
    Ok(())
}

/// A 2-D GGUF weight `[rows, cols]` as a [`Linear`] in `format`.
pub(crate) fn gguf_linear(f: &GgufFile, name: &str, rows: usize, cols: usize, format: WeightFormat) -> Result<Linear> {
    let view = f.tensor(name).ok_or_else(|| ModelError::MissingTensor(name.into()))?;
    check_shape(name, &view.shape(), &[rows, cols])?;
    let qt = QuantType::from_ggml_type_id(view.ty.id());
    match (format, qt) {
        (WeightFormat::Quantized, Some(qt)) => {
            let range = f.tensor_info(name).map(|i| i.range()).ok_or_else(|| ModelError::MissingTensor(name.into()))?;
            let buf: Arc<dyn AsRef<[u8]> + Send + Sync> = Arc::new(f.bytes().clone());
            Ok(Linear::Quant(QWeight::new(QMatrix::from_shared(qt, rows, cols, buf, range.start)?)))
        }
        (format, _) => {
            let data = gguf_f32(f, name, &[rows, cols])?;
            let t = Tensor::from_vec(data, &[rows, cols], &Device::Cpu)?;
            Ok(Linear::Dense(if format == WeightFormat::BF16 { t.to_dtype(DType::BF16)? } else { t }))
        }
    }
}
