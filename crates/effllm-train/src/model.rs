//! [`TrainableModel`]: what the trainer needs from an architecture, implemented for the Llama
//! ([`effllm_model::LlamaModel`]) and for Megalodon ([`megalodon::Megalodon`]).
//!
//! The trainer owns the f32 master weights as named requires-grad leaves; every step it rebuilds the model around
//! them ([`TrainableModel::with_parameters`]), optionally casts the compute copy ([`TrainableModel::bf16_compute`]),
//! and asks for the mean cross-entropy of a micro-batch of packed rows ([`TrainableModel::mean_cross_entropy`]).
//! Each row is an independent sequence: the Llama runs them as [`Batch::sequences`]; Megalodon runs them as its
//! batch dimension from a fresh [`MegalodonState`](megalodon::MegalodonState), so no CEMA or timestep-norm state
//! leaks from one row into another.
//!
//! The dependency points from this crate to the models: `effllm-model` and `megalodon` stay independent of the
//! trainer (each publishable and usable for inference alone), and this trait stays private to the training loop
//! rather than becoming a bound every model crate must implement.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;

use effllm_model::{Batch, CausalLm, LayeredLm, LlamaModel, NoHooks};
use effllm_tensor::{DType, Device, Tensor};
use megalodon::Megalodon;

use crate::config::Architecture;
use crate::{Result, TrainError};

/// The trainer features an architecture supports; a config that asks for one it lacks is a
/// [`TrainError::Config`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    /// bf16 compute copies of the matrices ([`Precision::Bf16`](crate::Precision::Bf16)).
    pub bf16: bool,
    /// Per-layer activation recomputation (`run.activation_checkpointing`).
    pub activation_checkpointing: bool,
}

/// A language model the [`Trainer`](crate::Trainer) can train.
pub trait TrainableModel: std::fmt::Debug + Send + Sync {
    /// The architecture.
    fn architecture(&self) -> Architecture;

    /// `(name, tensor)` for every trainable parameter, in a fixed order (the trainer's and the checkpoint's).
    fn named_parameters(&self) -> Vec<(String, Tensor)>;

    /// The same model with its parameters replaced by `params` (matched by name, shapes kept); a missing name is
    /// an error.
    fn with_parameters(&self, params: &[(String, Tensor)]) -> Result<Box<dyn TrainableModel>>;

    /// Whether the optimizer's weight decay applies to this parameter (matrices of linear maps and embeddings;
    /// not norm gains, biases or the like).
    fn decays(&self, name: &str, param: &Tensor) -> bool;

    /// The model whose matrices are differentiable bf16 casts of these (mixed precision). Only called when
    /// [`Architecture::features`] allows bf16.
    fn bf16_compute(&self) -> Result<Box<dyn TrainableModel>>;

    /// Mean cross-entropy (an f32 scalar) of `targets` given `inputs`: both `rows · seq_len` tokens, row after
    /// row, every row an independent sequence. `checkpoint_layers`: recompute each layer in the backward pass
    /// (only when [`Architecture::features`] allows it).
    fn mean_cross_entropy(
        &self,
        inputs: &[u32],
        targets: &[u32],
        seq_len: usize,
        checkpoint_layers: bool,
    ) -> Result<Tensor>;

    /// For downcasting to the concrete model ([`Trainer::model`](crate::Trainer::model),
    /// [`Trainer::megalodon`](crate::Trainer::megalodon)).
    fn as_any(&self) -> &dyn Any;
}

/// Looks a parameter up by name.
fn lookup<'a>(by_name: &HashMap<&str, &'a Tensor>, name: &str) -> Option<&'a Tensor> {
    by_name.get(name).copied()
}

impl TrainableModel for LlamaModel {
    fn architecture(&self) -> Architecture {
        Architecture::Llama
    }

    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        LlamaModel::named_parameters(self)
    }

    fn with_parameters(&self, params: &[(String, Tensor)]) -> Result<Box<dyn TrainableModel>> {
        let by_name: HashMap<&str, &Tensor> = params.iter().map(|(n, t)| (n.as_str(), t)).collect();
        Ok(Box::new(self.map_weights(&mut |name, _| {
            lookup(&by_name, name).cloned().ok_or_else(|| effllm_model::ModelError::Invalid {
                what: "trainer",
                msg: format!("no parameter `{name}`"),
            })
        })?))
    }

    fn decays(&self, _name: &str, param: &Tensor) -> bool {
        // Every Llama matrix is a linear map or the embedding; the vectors are RMSNorm gains.
        param.shape().len() >= 2
    }

    fn bf16_compute(&self) -> Result<Box<dyn TrainableModel>> {
        Ok(Box::new(self.map_weights(&mut |_, w| {
            if w.shape().len() == 2 { Ok(w.to_dtype(DType::BF16)?) } else { Ok(w.clone()) }
        })?))
    }

    fn mean_cross_entropy(
        &self,
        inputs: &[u32],
        targets: &[u32],
        seq_len: usize,
        checkpoint_layers: bool,
    ) -> Result<Tensor> {
        let batch = Batch::sequences(inputs, seq_len)?;
        let h = self.embed(inputs)?;
        let h = if checkpoint_layers && effllm_tensor::autograd::is_grad_enabled() {
            // Each layer keeps only its input; its activations are recomputed in the backward sweep.
            let model = Arc::new(self.clone());
            let batch = Arc::new(batch);
            let mut h = h;
            for li in 0..model.n_layers() {
                let (m, b) = (Arc::clone(&model), Arc::clone(&batch));
                h = effllm_tensor::checkpoint(&[h], move |x| {
                    let mut cache = m.new_cache();
                    m.run_layers(x[0].clone(), li..li + 1, &b, &mut cache, &mut NoHooks)
                        .map_err(|e| effllm_tensor::Error::InvalidArgument { op: "checkpoint", msg: e.to_string() })
                })?;
            }
            h
        } else {
            self.run_layers(h, 0..self.n_layers(), &batch, &mut self.new_cache(), &mut NoHooks)?
        };
        let logits = self.unembed(&h)?.to_dtype(DType::F32)?;
        let t = Tensor::from_slice(targets, &[targets.len()], &h.device())?;
        Ok(logits.cross_entropy(&t)?)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Megalodon parameter names (last path component) that are matrices of linear maps: the only ones decayed, as
/// in the reference's parameter groups (CEMA coefficients, norm gains, biases and the q/k affine stay undecayed).
const MEGALODON_DECAYED: &[&str] =
    &["wz.weight", "wv.weight", "wr.weight", "wh1.weight", "wh2.weight", "fc1", "fc2", "fc3"];

impl TrainableModel for Megalodon {
    fn architecture(&self) -> Architecture {
        Architecture::Megalodon
    }

    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        Megalodon::named_parameters(self)
    }

    fn with_parameters(&self, params: &[(String, Tensor)]) -> Result<Box<dyn TrainableModel>> {
        let by_name: HashMap<&str, &Tensor> = params.iter().map(|(n, t)| (n.as_str(), t)).collect();
        Ok(Box::new(self.map_parameters(|name, _| {
            lookup(&by_name, name).cloned().ok_or_else(|| megalodon::MegalodonError::InvalidArgument {
                op: "trainer",
                msg: format!("no parameter `{name}`"),
            })
        })?))
    }

    fn decays(&self, name: &str, _param: &Tensor) -> bool {
        name == "embed" || name == "output" || MEGALODON_DECAYED.iter().any(|s| name.ends_with(&format!(".{s}")))
    }

    fn bf16_compute(&self) -> Result<Box<dyn TrainableModel>> {
        Err(TrainError::Config("bf16 mixed precision is not supported for megalodon".into()))
    }

    fn mean_cross_entropy(
        &self,
        inputs: &[u32],
        targets: &[u32],
        seq_len: usize,
        checkpoint_layers: bool,
    ) -> Result<Tensor> {
        if checkpoint_layers {
            return Err(TrainError::Config("activation checkpointing is not supported for megalodon".into()));
        }
        if seq_len == 0 || !inputs.len().is_multiple_of(seq_len) || inputs.len() != targets.len() {
            return Err(TrainError::Data(format!(
                "{} inputs and {} targets are not rows of {seq_len} tokens",
                inputs.len(),
                targets.len()
            )));
        }
        let rows = inputs.len() / seq_len;
        let device = self.named_parameters().first().map_or(Device::Cpu, |(_, t)| t.device());
        let tokens = Tensor::from_slice(inputs, &[rows, seq_len], &device)?;
        // Every row starts from a fresh state: rows are independent sequences, as the Llama's packed rows are.
        let mut state = self.init_state(rows)?;
        let logits = self.forward(&tokens, &mut state)?;
        let logits = logits.reshape(&[rows * seq_len, self.config().vocab_size])?.to_dtype(DType::F32)?;
        let t = Tensor::from_slice(targets, &[targets.len()], &device)?;
        Ok(logits.cross_entropy(&t)?)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
