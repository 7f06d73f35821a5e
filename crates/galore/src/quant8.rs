//! 8-bit Adam: block-wise dynamically quantized moments (the inner optimizer of galore-torch's
//! `GaLoreAdamW8bit`, which uses bitsandbytes' `Optimizer2State("adam", optim_bits=8, block_wise=True)`).

use std::sync::OnceLock;

use effllm_optim::ParamState;
use effllm_tensor::{DType, Device, Tensor};

use crate::inner::{AdamConfig, AdamState, EpsMode, InnerOptimizer, WeightDecay, check};
use crate::{Adam, GaLoreError, Result};

/// The 256 code values of bitsandbytes' dynamic ("dynamic tree") quantization map, `create_dynamic_map(signed)`
/// with 7 exponent bits: for `i = 0..7`, the midpoints of `linspace(0.1, 1, 2^i + 1)` (signed; `2^{i+1} + 1` points
/// unsigned) times `10^{i−6}`, both signs when signed, plus 0 and 1; sorted. Dense near 0 and spanning seven
/// decades, so small moments keep their relative precision.
pub fn dynamic_map(signed: bool) -> &'static [f32; 256] {
    static SIGNED: OnceLock<[f32; 256]> = OnceLock::new();
    static UNSIGNED: OnceLock<[f32; 256]> = OnceLock::new();
    let build = move || {
        let mut data: Vec<f64> = Vec::with_capacity(256);
        for i in 0..7i32 {
            let items = if signed { (1usize << i) + 1 } else { (1usize << (i + 1)) + 1 };
            let bound = |k: usize| 0.1 + 0.9 * k as f64 / (items - 1) as f64;
            let scale = 10f64.powi(i - 6);
            for k in 0..items - 1 {
                let mean = (bound(k) + bound(k + 1)) / 2.0;
                data.push(scale * mean);
                if signed {
                    data.push(-scale * mean);
                }
            }
        }
        data.push(0.0);
        data.push(1.0);
        while data.len() < 256 {
            data.push(0.0);
        }
        let mut out = [0f32; 256];
        let mut v: Vec<f32> = data.iter().map(|&x| x as f32).collect();
        v.sort_by(f32::total_cmp);
        out.copy_from_slice(&v);
        out
    };
    if signed { SIGNED.get_or_init(build) } else { UNSIGNED.get_or_init(build) }
}

/// The index of the code nearest to `x` in the sorted map (ties to the lower code).
fn nearest(map: &[f32; 256], x: f32) -> u8 {
    let hi = map.partition_point(|&c| c < x).min(255);
    if hi == 0 {
        return 0;
    }
    let lo = hi - 1;
    if (x - map[lo]).abs() <= (map[hi] - x).abs() { lo as u8 } else { hi as u8 }
}

/// A tensor quantized block-wise to 8 bits: per block of `block_size` values, `absmax = max |x|` (f32) and one
/// code per value, `x ≈ map[code] · absmax`.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockQuantized {
    /// One code per value.
    pub codes: Vec<u8>,
    /// One scale per block.
    pub absmax: Vec<f32>,
    /// Values per block.
    pub block_size: usize,
    /// Signed map (first moment) or unsigned (second moment, non-negative).
    pub signed: bool,
}

impl BlockQuantized {
    /// Quantizes `values`.
    pub fn quantize(values: &[f32], block_size: usize, signed: bool) -> BlockQuantized {
        let map = dynamic_map(signed);
        let mut codes = Vec::with_capacity(values.len());
        let mut absmax = Vec::with_capacity(values.len().div_ceil(block_size));
        for block in values.chunks(block_size) {
            let a = block.iter().fold(0f32, |m, x| m.max(x.abs()));
            absmax.push(a);
            let inv = if a > 0.0 { 1.0 / a } else { 0.0 };
            codes.extend(block.iter().map(|&x| nearest(map, x * inv)));
        }
        BlockQuantized { codes, absmax, block_size, signed }
    }

    /// The dequantized values.
    pub fn dequantize(&self) -> Vec<f32> {
        let map = dynamic_map(self.signed);
        self.codes
            .chunks(self.block_size)
            .zip(&self.absmax)
            .flat_map(|(block, &a)| block.iter().map(move |&c| map[c as usize] * a))
            .collect()
    }

    /// Bytes held: one per code plus four per block scale.
    pub fn bytes(&self) -> usize {
        self.codes.len() + 4 * self.absmax.len()
    }
}

/// The state of [`Adam8bit`]: f32 moments for tensors with fewer than `min_8bit_size` elements, else quantized.
#[derive(Clone, Debug)]
pub enum Adam8bitState {
    /// 32-bit moments (small tensors), exactly [`Adam`]'s.
    F32(AdamState),
    /// 8-bit block-quantized moments.
    Q8 {
        /// First moment (signed map).
        exp_avg: BlockQuantized,
        /// Second moment (unsigned map).
        exp_avg_sq: BlockQuantized,
        /// The shape of the gradient.
        shape: Vec<usize>,
    },
}

/// Adam with block-wise 8-bit moments. Each step dequantizes both moments, runs the [`Adam`] update in f32
/// (this crate's [`AdamConfig`]: ε placement and bias correction as configured), computes the direction from the
/// updated f32 moments, then quantizes them again with fresh per-block scales (as bitsandbytes' fused kernel
/// does). Tensors with fewer than `min_8bit_size` elements (default 4096, bitsandbytes' `min_8bit_size`) keep f32
/// moments and match [`Adam`] bit for bit. Not bit-equal to bitsandbytes (its CUDA kernels and rounding are not
/// reproduced); the block size (default 256) is this crate's choice.
#[derive(Clone, Debug)]
pub struct Adam8bit {
    fp32: Adam,
    block_size: usize,
    min_8bit_size: usize,
}

impl Adam8bit {
    /// An optimizer with `cfg` (see [`AdamConfig::galore_8bit`] for galore-torch's defaults), block size 256 and
    /// `min_8bit_size` 4096.
    pub fn new(cfg: AdamConfig) -> Result<Adam8bit> {
        cfg.validate("AdamW8bit")?;
        Ok(Adam8bit { fp32: Adam::new(cfg)?, block_size: 256, min_8bit_size: 4096 })
    }

    /// Sets the quantization block size (≥ 1).
    pub fn with_block_size(mut self, block_size: usize) -> Result<Adam8bit> {
        check("AdamW8bit", "block_size", block_size as f64, block_size >= 1, ">= 1")?;
        self.block_size = block_size;
        Ok(self)
    }

    /// Sets the smallest element count whose moments are quantized.
    pub fn with_min_8bit_size(mut self, min_8bit_size: usize) -> Adam8bit {
        self.min_8bit_size = min_8bit_size;
        self
    }

    /// The hyperparameters.
    pub fn config(&self) -> &AdamConfig {
        self.fp32.config()
    }

    /// The quantization block size.
    pub fn block_size(&self) -> usize {
        self.block_size
    }
}

impl InnerOptimizer for Adam8bit {
    type State = Adam8bitState;

    fn name(&self) -> &'static str {
        "AdamW8bit"
    }

    fn galore_name(&self) -> &'static str {
        "GaLore-AdamW8bit"
    }

    fn learning_rate(&self) -> f64 {
        self.fp32.learning_rate()
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.fp32.set_learning_rate(lr);
    }

    fn weight_decay(&self) -> WeightDecay {
        self.fp32.weight_decay()
    }

    fn init_state(&self, shape: &[usize], device: &Device) -> Result<Adam8bitState> {
        let numel: usize = shape.iter().product();
        if numel < self.min_8bit_size {
            return Ok(Adam8bitState::F32(self.fp32.init_state(shape, device)?));
        }
        let zeros = vec![0f32; numel];
        Ok(Adam8bitState::Q8 {
            exp_avg: BlockQuantized::quantize(&zeros, self.block_size, true),
            exp_avg_sq: BlockQuantized::quantize(&zeros, self.block_size, false),
            shape: shape.to_vec(),
        })
    }

    fn direction(&self, state: &mut Adam8bitState, grad: &Tensor, t: u64) -> Result<(Tensor, f64)> {
        let (exp_avg, exp_avg_sq, shape) = match state {
            Adam8bitState::F32(s) => return self.fp32.direction(s, grad, t),
            Adam8bitState::Q8 { exp_avg, exp_avg_sq, shape } => (exp_avg, exp_avg_sq, shape),
        };
        if grad.shape() != shape.as_slice() {
            return Err(GaLoreError::Tensor(effllm_tensor::Error::ShapeMismatch {
                op: "AdamW8bit",
                lhs: grad.shape().to_vec(),
                rhs: shape.clone(),
            }));
        }
        let c = self.config();
        let g = grad.to_dtype(DType::F32)?.to_vec::<f32>()?;
        let mut m = exp_avg.dequantize();
        let mut v = exp_avg_sq.dequantize();
        let (b1, b2, eps) = (c.beta1 as f32, c.beta2 as f32, c.eps as f32);
        let (bc1, bc2_sqrt) = c.corrections(t);
        let inv_bc2 = (1.0 / bc2_sqrt) as f32;
        let mut n = vec![0f32; g.len()];
        for i in 0..g.len() {
            m[i] = match c.eps_mode {
                EpsMode::Hf => m[i] * b1 + g[i] * (1.0 - b1),
                EpsMode::Torch => m[i] + (g[i] - m[i]) * (1.0 - b1),
            };
            v[i] = v[i] * b2 + g[i] * g[i] * (1.0 - b2);
            n[i] = match c.eps_mode {
                EpsMode::Hf => m[i] / (v[i].sqrt() + eps),
                EpsMode::Torch => m[i] / (v[i].sqrt() * inv_bc2 + eps),
            };
        }
        *exp_avg = BlockQuantized::quantize(&m, self.block_size, true);
        *exp_avg_sq = BlockQuantized::quantize(&v, self.block_size, false);
        let step = match c.eps_mode {
            EpsMode::Hf => c.lr * bc2_sqrt / bc1,
            EpsMode::Torch => c.lr / bc1,
        };
        Ok((Tensor::from_vec(n, shape, &Device::Cpu)?.to_device(&grad.device())?, step))
    }

    fn map_first_moment(&self, state: &mut Adam8bitState, f: &mut dyn FnMut(&Tensor) -> Result<Tensor>) -> Result<()> {
        match state {
            Adam8bitState::F32(s) => self.fp32.map_first_moment(s, f),
            Adam8bitState::Q8 { exp_avg, shape, .. } => {
                let m = Tensor::from_vec(exp_avg.dequantize(), shape, &Device::Cpu)?;
                let m = f(&m)?.to_device(&Device::Cpu)?.to_dtype(DType::F32)?.to_vec::<f32>()?;
                *exp_avg = BlockQuantized::quantize(&m, self.block_size, true);
                Ok(())
            }
        }
    }

    fn first_moment(&self, state: &Adam8bitState) -> Result<Option<Tensor>> {
        match state {
            Adam8bitState::F32(s) => Ok(Some(s.exp_avg.clone())),
            Adam8bitState::Q8 { exp_avg, shape, .. } => {
                Ok(Some(Tensor::from_vec(exp_avg.dequantize(), shape, &Device::Cpu)?))
            }
        }
    }

    fn state_bytes(&self, state: &Adam8bitState) -> usize {
        match state {
            Adam8bitState::F32(s) => self.fp32.state_bytes(s),
            Adam8bitState::Q8 { exp_avg, exp_avg_sq, .. } => exp_avg.bytes() + exp_avg_sq.bytes(),
        }
    }

    fn export_state(&self, state: &Adam8bitState, out: &mut ParamState) {
        match state {
            Adam8bitState::F32(s) => self.fp32.export_state(s, out),
            Adam8bitState::Q8 { exp_avg, exp_avg_sq, .. } => {
                for (name, q) in [("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)] {
                    let codes = Tensor::from_vec(q.codes.clone(), &[q.codes.len()], &Device::Cpu);
                    let absmax = Tensor::from_vec(q.absmax.clone(), &[q.absmax.len()], &Device::Cpu);
                    // Host vectors of matching lengths: building these tensors cannot fail.
                    if let (Ok(codes), Ok(absmax)) = (codes, absmax) {
                        out.tensors.insert(format!("{name}.codes"), codes);
                        out.tensors.insert(format!("{name}.absmax"), absmax);
                    }
                }
                out.scalars.insert("block_size".into(), exp_avg.block_size as f64);
            }
        }
    }

    fn import_state(&self, state: &ParamState, shape: &[usize], device: &Device) -> Result<Adam8bitState> {
        const O: &str = "GaLore-AdamW8bit";
        let numel: usize = shape.iter().product();
        let quantized = state.tensors.contains_key("exp_avg.codes");
        if numel < self.min_8bit_size {
            if quantized {
                return Err(GaLoreError::BadState(format!(
                    "8-bit moments for a tensor of {numel} elements (below min_8bit_size {})",
                    self.min_8bit_size
                )));
            }
            return Ok(Adam8bitState::F32(self.fp32.import_state(state, shape, device)?));
        }
        if !quantized {
            return Err(GaLoreError::BadState(format!(
                "f32 moments for a tensor of {numel} elements (8-bit expected)"
            )));
        }
        let block = state.scalar(O, "block_size")?;
        if block != self.block_size as f64 {
            return Err(GaLoreError::BadState(format!(
                "block size {block} in the checkpoint, {} configured",
                self.block_size
            )));
        }
        let read = |name: &str, signed: bool| -> Result<BlockQuantized> {
            let codes = state.tensor(O, &format!("{name}.codes"))?.to_dtype(DType::U8)?.to_vec::<u8>()?;
            let absmax = state.tensor(O, &format!("{name}.absmax"))?.to_dtype(DType::F32)?.to_vec::<f32>()?;
            if codes.len() != numel || absmax.len() != numel.div_ceil(self.block_size) {
                return Err(GaLoreError::BadState(format!(
                    "`{name}` holds {} codes and {} scales, the tensor needs {numel} and {}",
                    codes.len(),
                    absmax.len(),
                    numel.div_ceil(self.block_size)
                )));
            }
            Ok(BlockQuantized { codes, absmax, block_size: self.block_size, signed })
        };
        Ok(Adam8bitState::Q8 {
            exp_avg: read("exp_avg", true)?,
            exp_avg_sq: read("exp_avg_sq", false)?,
            shape: shape.to_vec(),
        })
    }
}
