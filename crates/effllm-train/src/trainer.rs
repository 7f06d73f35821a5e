//! [`Trainer`]: the training loop over a [`TrainableModel`] (a Llama or a Megalodon).

use std::time::Instant;

use effllm_model::{Embedding, Linear, LlamaFfn, LlamaLayer, LlamaModel};
use effllm_optim::schedule::WarmupCosine;
use effllm_optim::{AdamW, AdamWConfig, Optimizer, clip};
use effllm_tensor::rng::CounterRng;
use effllm_tensor::{DType, Device, Gradients, Tensor, memory};
use serde::{Deserialize, Serialize};

use crate::config::{Architecture, Precision, TrainConfig};
use crate::data::{DataCursor, TrainData, inputs_and_targets};
use crate::model::TrainableModel;
use crate::{Result, TrainError};

/// Bytes of training state, reported separately (GaLore's and sparse-zo's claims are about these numbers).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryReport {
    /// Master weights.
    pub params: usize,
    /// Gradients of the last step (one per parameter, f32).
    pub grads: usize,
    /// Optimizer state (AdamW: its two moments).
    pub optimizer_state: usize,
    /// Tensor bytes the autograd graph kept alive at the end of the last micro-batch's forward pass, above what
    /// existed before it (saved activations, the bf16 compute copies, the logits): measured by the tensor
    /// crate's live-memory counter, the largest over the step's micro-batches.
    pub activations: usize,
    /// The high-water mark of tensor bytes during the last step's forward + backward, above what existed before
    /// it (activations, gradients as they form, temporaries).
    pub step_peak: usize,
}

/// Wall-clock seconds of the parts of the last step as the host sees them: without synchronised timing the device
/// is waited for at the loss readback (after the backward is queued, so `backward_s` holds most device time) and at
/// the gradient norm (in `update_s`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StepTiming {
    /// Forward passes to the loss (all micro-batches).
    pub forward_s: f64,
    /// Backward sweeps.
    pub backward_s: f64,
    /// Clipping and the optimizer update.
    pub update_s: f64,
}

/// One optimizer step's record.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Steps completed after this one.
    pub step: usize,
    /// Mean training loss over the step's tokens (nats).
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Tokens per second of this step (forward, backward, update).
    pub tokens_per_s: f64,
}

/// One evaluation's record.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    /// Steps completed.
    pub step: usize,
    /// Mean validation loss (nats per token).
    pub loss: f64,
    /// `exp(loss)`.
    pub perplexity: f64,
    /// Validation tokens scored.
    pub tokens: usize,
    /// Memory at this evaluation.
    pub memory: MemoryReport,
}

/// Trains a model of [`TrainConfig`]'s shape (a Llama, or a Megalodon with `"architecture": "megalodon"`) on
/// [`TrainData`].
#[derive(Debug)]
pub struct Trainer {
    pub(crate) cfg: TrainConfig,
    pub(crate) device: Device,
    /// The model's structure; its weights are replaced by `params` at every step.
    pub(crate) template: Box<dyn TrainableModel>,
    /// Master weights (f32, requires-grad leaves) by name, in `named_parameters` order.
    pub(crate) params: Vec<(String, Tensor)>,
    /// Per parameter (same order): whether it is in the weight-decayed optimizer group.
    pub(crate) decayed: Vec<bool>,
    /// The optimizer of the matrices (with weight decay).
    pub(crate) decay: Opt,
    /// The optimizer of the norm gains (no weight decay).
    pub(crate) no_decay: Opt,
    schedule: WarmupCosine,
    pub(crate) step: usize,
    pub(crate) tokens_seen: u64,
    pub(crate) cursor: DataCursor,
    pub(crate) history: Vec<StepRecord>,
    pub(crate) evals: Vec<EvalRecord>,
    memory: MemoryReport,
    timing: StepTiming,
    synchronized_timing: bool,
}

/// Builds the optimizer of one parameter group from the run's config and the group's weight decay (`optim
/// .weight_decay` for matrices, 0 for norm gains). [`Trainer::new`] uses [`adamw`]; GaLore or any other
/// [`Optimizer`] plugs in through [`Trainer::with_optimizer`].
pub type OptimizerFactory = dyn Fn(&TrainConfig, f64) -> Result<Box<dyn Optimizer + Send>>;

/// [`OptimizerFactory`] that also sees the group's parameters by name (in `named_parameters` order): the matrices
/// (embedding, attention, FFN) for the call with `optim.weight_decay`, the norm gains for the call with 0. For
/// optimizers that treat parameters differently by name or shape — GaLore projects the attention and FFN matrices
/// only. Plugs in through [`Trainer::with_group_optimizer`]; it may borrow from its caller (`'a`).
pub type GroupOptimizerFactory<'a> =
    dyn Fn(&TrainConfig, f64, &[(String, Tensor)]) -> Result<Box<dyn Optimizer + Send>> + 'a;

/// AdamW with the config's hyperparameters (PyTorch semantics; no AMSGrad).
pub fn adamw(cfg: &TrainConfig, weight_decay: f64) -> Result<Box<dyn Optimizer + Send>> {
    let o = &cfg.optim;
    Ok(Box::new(AdamW::new(AdamWConfig {
        lr: o.lr,
        beta1: o.beta1,
        beta2: o.beta2,
        eps: o.eps,
        weight_decay,
        amsgrad: false,
    })?))
}

/// A boxed optimizer that prints its name (the trait has no `Debug` bound).
pub(crate) struct Opt(pub(crate) Box<dyn Optimizer + Send>);

impl std::fmt::Debug for Opt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({} state bytes)", self.0.name(), self.0.state_bytes())
    }
}

impl Trainer {
    /// A freshly initialised model of `cfg`'s shape for `vocab` tokens, on `cfg.run.device`, trained by AdamW.
    pub fn new(cfg: TrainConfig, vocab: usize) -> Result<Trainer> {
        Trainer::with_optimizer(cfg, vocab, &adamw)
    }

    /// [`Trainer::new`] with another optimizer: `make(cfg, weight_decay)` is called once for the matrices and once
    /// (decay 0) for the norm gains. The learning-rate schedule, clipping and checkpoints work as with AdamW
    /// (checkpoints record the optimizer's [`name`](Optimizer::name) and its exported state).
    pub fn with_optimizer(cfg: TrainConfig, vocab: usize, make: &OptimizerFactory) -> Result<Trainer> {
        Trainer::with_group_optimizer(cfg, vocab, &|cfg, weight_decay, _| make(cfg, weight_decay))
    }

    /// [`Trainer::with_optimizer`] with a factory that is also given each group's named parameters (the tensors
    /// the optimizer will step): `make(cfg, optim.weight_decay, matrices)` and `make(cfg, 0, norm gains)`.
    pub fn with_group_optimizer(cfg: TrainConfig, vocab: usize, make: &GroupOptimizerFactory<'_>) -> Result<Trainer> {
        cfg.validate()?;
        if let Some(n) = cfg.run.threads {
            effllm_tensor::threads::set_num_threads(n)?;
        }
        let device = Device::parse(&cfg.run.device)?;
        device.check_available()?;
        let template: Box<dyn TrainableModel> = match cfg.model.architecture {
            Architecture::Llama => Box::new(init_model(&cfg, vocab, &device)?),
            Architecture::Megalodon => Box::new(init_megalodon(&cfg, vocab, &device)?),
        };
        let params: Vec<(String, Tensor)> = template.named_parameters();
        let decayed: Vec<bool> = params.iter().map(|(n, p)| template.decays(n, p)).collect();
        let schedule =
            WarmupCosine::new(cfg.optim.lr, cfg.optim.min_lr, cfg.optim.warmup_steps as u64, cfg.run.steps as u64)?;
        // The split `train_step` uses: the model's weight-decayed parameters (the Llama's matrices) and the rest.
        let (mut matrices, mut gains) = (Vec::new(), Vec::new());
        for (np, &d) in params.iter().zip(&decayed) {
            if d { matrices.push(np.clone()) } else { gains.push(np.clone()) }
        }
        Ok(Trainer {
            decay: Opt(make(&cfg, cfg.optim.weight_decay, &matrices)?),
            no_decay: Opt(make(&cfg, 0.0, &gains)?),
            cfg,
            device,
            template,
            params,
            decayed,
            schedule,
            step: 0,
            tokens_seen: 0,
            cursor: DataCursor::default(),
            history: Vec::new(),
            evals: Vec::new(),
            memory: MemoryReport::default(),
            timing: StepTiming::default(),
            synchronized_timing: false,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// Optimizer steps completed.
    pub fn step(&self) -> usize {
        self.step
    }

    /// Training tokens consumed.
    pub fn tokens_seen(&self) -> u64 {
        self.tokens_seen
    }

    /// Per-step records so far (this process and, after a resume, the checkpoint's).
    pub fn history(&self) -> &[StepRecord] {
        &self.history
    }

    /// Evaluations so far.
    pub fn evals(&self) -> &[EvalRecord] {
        &self.evals
    }

    /// The master weights by name.
    pub fn parameters(&self) -> &[(String, Tensor)] {
        &self.params
    }

    /// Number of trainable scalars.
    pub fn num_parameters(&self) -> usize {
        self.params.iter().map(|(_, p)| p.elem_count()).sum()
    }

    /// The memory report of the last step.
    pub fn memory(&self) -> MemoryReport {
        self.memory
    }

    /// Makes [`last_step_timing`](Self::last_step_timing) exact on a GPU by waiting for the device after the
    /// forward and the backward pass (costs a little throughput; for profiling).
    pub fn set_synchronized_timing(&mut self, on: bool) {
        self.synchronized_timing = on;
    }

    /// Waits for queued device work when synchronised timing is on.
    fn sync_for_timing(&self) -> Result<()> {
        if let (true, Device::Cuda(n)) = (self.synchronized_timing, self.device) {
            effllm_tensor::cuda::device(n)?.synchronize()?;
        }
        Ok(())
    }

    /// Where the last step's time went.
    pub fn last_step_timing(&self) -> StepTiming {
        self.timing
    }

    /// The model with the current master weights (f32, tracked leaves), whatever its architecture: for inference
    /// wrap calls in [`no_grad`](effllm_tensor::no_grad).
    pub fn trained_model(&self) -> Result<Box<dyn TrainableModel>> {
        self.template.with_parameters(&self.params)
    }

    /// The Llama with the current master weights (f32, tracked leaves): for inference wrap calls in
    /// [`no_grad`](effllm_tensor::no_grad). A [`TrainError::Config`] when this run trains another architecture.
    pub fn model(&self) -> Result<LlamaModel> {
        self.trained_model()?.as_any().downcast_ref::<LlamaModel>().cloned().ok_or_else(|| {
            TrainError::Config(format!(
                "this run trains {}, not a Llama (see Trainer::trained_model)",
                self.cfg.model.architecture.name()
            ))
        })
    }

    /// The Megalodon with the current master weights (f32, tracked leaves). A [`TrainError::Config`] when this
    /// run trains another architecture.
    pub fn megalodon(&self) -> Result<megalodon::Megalodon> {
        self.trained_model()?.as_any().downcast_ref::<megalodon::Megalodon>().cloned().ok_or_else(|| {
            TrainError::Config(format!(
                "this run trains {}, not a Megalodon (see Trainer::trained_model)",
                self.cfg.model.architecture.name()
            ))
        })
    }

    /// The model the forward pass runs: the masters themselves (f32), or differentiable bf16 casts of the
    /// matrices (mixed precision; gradients flow back to the f32 masters).
    fn compute_model(&self) -> Result<Box<dyn TrainableModel>> {
        let masters = self.trained_model()?;
        match self.cfg.run.precision {
            Precision::F32 => Ok(masters),
            Precision::Bf16 => masters.bf16_compute(),
        }
    }

    /// Mean cross-entropy (f32 scalar) of `targets` given `inputs`, both `n_seq · seq_len` tokens.
    fn loss(&self, model: &dyn TrainableModel, inputs: &[u32], targets: &[u32]) -> Result<Tensor> {
        model.mean_cross_entropy(inputs, targets, self.cfg.data.seq_len, self.cfg.run.activation_checkpointing)
    }

    /// One optimizer step: `grad_accum` micro-batches of `batch_size` rows, mean loss, global-norm clipping,
    /// the optimizer (AdamW by default) at the scheduled learning rate. A non-finite loss or gradient is [`TrainError::NonFinite`] and leaves
    /// the weights and optimizer state untouched.
    pub fn train_step(&mut self, data: &mut TrainData) -> Result<StepRecord> {
        let t0 = Instant::now();
        let (b, len, accum) = (self.cfg.data.batch_size, self.cfg.data.seq_len, self.cfg.data.grad_accum);
        let before = memory::stats().live_on(&self.device);
        memory::reset_peak();
        let mut grads = Gradients::new();
        let mut loss_sum = 0.0;
        let mut activations = 0usize;
        let mut cursor = self.cursor;
        let mut timing = StepTiming::default();
        for _ in 0..accum {
            let tf = Instant::now();
            let rows = data.next_train_rows(&mut cursor, b, self.cfg.run.seed);
            let (inputs, targets) = inputs_and_targets(&rows, len);
            let live0 = memory::stats().live_on(&self.device);
            let model = self.compute_model()?;
            let loss = self.loss(model.as_ref(), &inputs, &targets)?;
            drop(model);
            activations = activations.max(memory::stats().live_on(&self.device).saturating_sub(live0));
            self.sync_for_timing()?;
            timing.forward_s += tf.elapsed().as_secs_f64();
            let tb = Instant::now();
            grads.accumulate(&loss.affine(1.0 / accum as f64, 0.0)?)?;
            // The loss is read once the backward is queued: reading it first would drain the device and leave it idle
            // while the host queues the backward. A non-finite loss still stops the step before any update.
            let l = loss.to_scalar::<f32>()? as f64;
            if !l.is_finite() {
                return Err(TrainError::NonFinite { step: self.step + 1, what: format!("training loss {l}") });
            }
            loss_sum += l;
            timing.backward_s += tb.elapsed().as_secs_f64();
        }
        let tu = Instant::now();
        let step_peak = memory::stats().peak_on(&self.device).saturating_sub(before);
        // The global norm is NaN or infinite iff some gradient entry is: one device reduction per parameter. Only
        // then are the gradients scanned on the host to name the culprit.
        let grad_norm = clip::global_norm(&grads)?;
        if !grad_norm.is_finite() {
            let bad = grads.non_finite()?;
            let (name, n) = bad
                .first()
                .map(|(id, n)| {
                    let name = self.params.iter().find(|(_, p)| p.id() == Some(*id)).map_or("?", |(n, _)| n.as_str());
                    (name.to_string(), *n)
                })
                .unwrap_or_else(|| ("?".into(), 0));
            return Err(TrainError::NonFinite {
                step: self.step + 1,
                what: format!("gradient norm {grad_norm}: {n} entries of `{name}` ({} parameters affected)", bad.len()),
            });
        }
        // `torch.nn.utils.clip_grad_norm_` with the norm just computed: its factor goes to the optimizer with each
        // gradient (fused into AdamW's CUDA kernel) instead of a scaled copy of every gradient first.
        let clip_scale = if self.cfg.optim.clip_norm > 0.0 {
            clip::clip_coefficient(grad_norm, self.cfg.optim.clip_norm)
        } else {
            1.0
        };
        let lr = self.schedule.lr(self.step as u64);
        self.decay.0.set_learning_rate(lr);
        self.no_decay.0.set_learning_rate(lr);
        let grad_bytes = grads.nbytes();
        for ((_, p), &decayed) in self.params.iter_mut().zip(&self.decayed) {
            let Some(g) = grads.take(p) else { continue };
            let opt = if decayed { &mut self.decay.0 } else { &mut self.no_decay.0 };
            opt.step_param_scaled(p, &g, clip_scale)?;
        }
        self.sync_for_timing()?;
        timing.update_s = tu.elapsed().as_secs_f64();
        self.timing = timing;
        // The template now points at the updated storages (it would otherwise keep the previous weights alive).
        self.template = self.trained_model()?;
        self.cursor = cursor;
        self.step += 1;
        let tokens = b * len * accum;
        self.tokens_seen += tokens as u64;
        self.memory = MemoryReport {
            params: self.params.iter().map(|(_, p)| p.elem_count() * p.dtype().size_in_bytes()).sum(),
            grads: grad_bytes,
            optimizer_state: self.decay.0.state_bytes() + self.no_decay.0.state_bytes(),
            activations,
            step_peak,
        };
        let rec = StepRecord {
            step: self.step,
            loss: loss_sum / accum as f64,
            grad_norm,
            lr,
            tokens_per_s: tokens as f64 / t0.elapsed().as_secs_f64(),
        };
        self.history.push(rec);
        Ok(rec)
    }

    /// Mean validation loss over the first `data.eval_sequences` validation rows (no gradients), in chunks of
    /// `batch_size` rows.
    pub fn evaluate(&mut self, data: &TrainData) -> Result<EvalRecord> {
        let len = self.cfg.data.seq_len;
        let rows = data.val_rows_flat(self.cfg.data.eval_sequences);
        let model = self.compute_model()?;
        let (mut nll, mut n) = (0.0, 0usize);
        effllm_tensor::no_grad(|| -> Result<()> {
            for chunk in rows.chunks(self.cfg.data.batch_size * (len + 1)) {
                let (inputs, targets) = inputs_and_targets(chunk, len);
                let l = self.loss(model.as_ref(), &inputs, &targets)?.to_scalar::<f32>()? as f64;
                nll += l * targets.len() as f64;
                n += targets.len();
            }
            Ok(())
        })?;
        let loss = nll / n.max(1) as f64;
        if !loss.is_finite() {
            return Err(TrainError::NonFinite { step: self.step, what: format!("validation loss {loss}") });
        }
        let rec = EvalRecord { step: self.step, loss, perplexity: loss.exp(), tokens: n, memory: self.memory };
        self.evals.push(rec);
        Ok(rec)
    }

    /// Trains until `cfg.run.steps`, evaluating every `eval_every` steps and checkpointing every
    /// `checkpoint_every` steps and at the end. `observe` sees every step and evaluation (a progress bar, a log).
    /// A non-finite loss stops the run with [`TrainError::NonFinite`]; the last checkpoint on disk is the last good
    /// one (nothing is written after the failure).
    pub fn run(&mut self, data: &mut TrainData, observe: &mut dyn FnMut(Event<'_>)) -> Result<()> {
        let run = self.cfg.run.clone();
        while self.step < run.steps {
            let rec = self.train_step(data)?;
            observe(Event::Step(&rec));
            let last = self.step == run.steps;
            if self.step.is_multiple_of(run.eval_every) || last {
                let e = self.evaluate(data)?;
                observe(Event::Eval(&e));
            }
            if (run.checkpoint_every > 0 && self.step.is_multiple_of(run.checkpoint_every)) || last {
                let dir = crate::checkpoint::checkpoint_dir(&self.cfg);
                self.save(&dir, data)?;
                observe(Event::Checkpoint(&dir));
            }
        }
        Ok(())
    }
}

/// What [`Trainer::run`] reports as it goes.
#[derive(Debug)]
pub enum Event<'a> {
    /// A step finished.
    Step(&'a StepRecord),
    /// An evaluation finished.
    Eval(&'a EvalRecord),
    /// A checkpoint was written to this directory.
    Checkpoint(&'a std::path::Path),
}

/// A seeded initialisation: matrices `N(0, init_std²)` (output projections `N(0, (init_std/√(2L))²)`), norm gains 1.
/// Every weight has its own counter-based stream, so the values do not depend on the device or thread count.
fn init_model(cfg: &TrainConfig, vocab: usize, device: &Device) -> Result<LlamaModel> {
    let lc = cfg.llama_config(vocab);
    let std = cfg.model.init_std;
    let out_std = std / (2.0 * lc.n_layer as f64).sqrt();
    let mut stream = 0u64;
    let mut normal = |shape: &[usize], s: f64| -> Result<Tensor> {
        stream += 1;
        let rng = CounterRng::new(cfg.run.seed, stream);
        Ok(Tensor::randn(shape, DType::F32, &Device::Cpu, &rng, 0, 0.0, s)?.to_device(device)?.requires_grad())
    };
    let ones = |n: usize| -> Result<Tensor> {
        Ok(Tensor::from_vec(vec![1f32; n], &[n], &Device::Cpu)?.to_device(device)?.requires_grad())
    };
    let (d, hd) = (lc.d_model, lc.head_dim);
    let embedding = normal(&[vocab, d], std)?;
    let mut layers = Vec::with_capacity(lc.n_layer);
    for _ in 0..lc.n_layer {
        layers.push(LlamaLayer {
            attn_norm: ones(d)?,
            wq: Linear::Dense(normal(&[lc.n_head * hd, d], std)?),
            wk: Linear::Dense(normal(&[lc.n_head_kv * hd, d], std)?),
            wv: Linear::Dense(normal(&[lc.n_head_kv * hd, d], std)?),
            wo: Linear::Dense(normal(&[d, lc.n_head * hd], out_std)?),
            ffn_norm: ones(d)?,
            ffn: LlamaFfn {
                gate: Linear::Dense(normal(&[lc.d_ff, d], std)?),
                up: Linear::Dense(normal(&[lc.d_ff, d], std)?),
                down: Linear::Dense(normal(&[d, lc.d_ff], out_std)?),
            },
        });
    }
    let lm_head =
        if lc.tied_embeddings { Linear::Dense(embedding.clone()) } else { Linear::Dense(normal(&[vocab, d], std)?) };
    Ok(LlamaModel::from_parts(lc, Embedding::Dense(embedding), layers, ones(d)?, lm_head)?)
}

/// Megalodon with the reference initialisation ([`megalodon::Megalodon::new`]) seeded by `run.seed`, built on the
/// CPU (so the values do not depend on the device) and moved to `device` as requires-grad leaves.
fn init_megalodon(cfg: &TrainConfig, vocab: usize, device: &Device) -> Result<megalodon::Megalodon> {
    let mc = cfg
        .megalodon_config(vocab)
        .ok_or_else(|| TrainError::Config("model.megalodon: missing for architecture `megalodon`".into()))?;
    let model = megalodon::Megalodon::new(mc, DType::F32, &Device::Cpu, cfg.run.seed)?;
    Ok(model.to_device(device)?.requires_grad()?)
}
