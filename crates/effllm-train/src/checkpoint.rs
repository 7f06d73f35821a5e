//! Checkpoints: a directory with `model.safetensors` (the f32 master weights by parameter name),
//! `optimizer.safetensors` (the optimizer's exported state tensors as `<parameter>/<state>`) and `trainer.json` (the config, the
//! tokenizer fingerprint, step, data cursor, optimizer scalars, history). Written to a temporary directory and
//! renamed over the previous checkpoint, so a crash never leaves half a checkpoint behind.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use effllm_optim::{Optimizer, ParamState};
use effllm_tensor::{DType, Device, Tensor};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::data::{DataCursor, TrainData};
use crate::trainer::{EvalRecord, StepRecord, Trainer};
use crate::{Result, TrainError};

/// Version of the checkpoint layout.
pub const CHECKPOINT_FORMAT: u32 = 1;

#[derive(Serialize, Deserialize)]
struct TrainerState {
    format: u32,
    config: TrainConfig,
    vocab: usize,
    tokenizer: String,
    step: usize,
    tokens_seen: u64,
    cursor: DataCursor,
    optimizer: String,
    /// Per parameter with optimizer state: its scalars (AdamW: `step`).
    optimizer_scalars: BTreeMap<String, BTreeMap<String, f64>>,
    history: Vec<StepRecord>,
    evals: Vec<EvalRecord>,
}

fn io(path: &Path, what: &str, e: impl std::fmt::Display) -> TrainError {
    TrainError::Io { path: path.to_path_buf(), msg: format!("{what}: {e}") }
}

fn bad(path: &Path, msg: impl Into<String>) -> TrainError {
    TrainError::Checkpoint { path: path.to_path_buf(), msg: msg.into() }
}

/// f32 host bytes of a tensor.
fn f32_bytes(t: &Tensor) -> Result<Vec<u8>> {
    let v = t.detach().to_dtype(DType::F32)?.to_vec::<f32>()?;
    Ok(v.iter().flat_map(|x| x.to_le_bytes()).collect())
}

fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>, Vec<u8>)]) -> Result<()> {
    let views = tensors
        .iter()
        .map(|(n, shape, bytes)| {
            TensorView::new(Dtype::F32, shape.clone(), bytes).map(|v| (n.clone(), v)).map_err(|e| io(path, "tensor", e))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize_to_file(views, None, path).map_err(|e| io(path, "cannot write", e))
}

/// A safetensors entry read back: shape and f32 values.
type F32Entry = (Vec<usize>, Vec<f32>);

/// Reads a safetensors file into `name → (shape, f32 values)`, checking every entry is f32.
fn read_safetensors(path: &Path) -> Result<HashMap<String, F32Entry>> {
    let buf = std::fs::read(path).map_err(|e| io(path, "cannot read", e))?;
    let st = SafeTensors::deserialize(&buf).map_err(|e| bad(path, format!("not a valid safetensors file: {e}")))?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(bad(path, format!("tensor `{name}` is {:?}, expected F32", view.dtype())));
        }
        let data = view.data();
        let vals: Vec<f32> = data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        out.insert(name, (view.shape().to_vec(), vals));
    }
    Ok(out)
}

impl Trainer {
    fn optimizer_of(&self, decayed: bool) -> &dyn Optimizer {
        if decayed { self.decay.0.as_ref() } else { self.no_decay.0.as_ref() }
    }

    /// Writes a checkpoint of the current state to `dir` (replacing one that is there).
    pub fn save(&self, dir: &Path, data: &TrainData) -> Result<()> {
        let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(|e| io(parent, "cannot create", e))?;
        let tmp = dir.with_extension("tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| io(&tmp, "cannot remove a stale temporary", e))?;
        }
        std::fs::create_dir_all(&tmp).map_err(|e| io(&tmp, "cannot create", e))?;
        let mut weights = Vec::with_capacity(self.params.len());
        let mut moments = Vec::new();
        let mut scalars = BTreeMap::new();
        for ((name, p), &decayed) in self.params.iter().zip(&self.decayed) {
            weights.push((name.clone(), p.shape().to_vec(), f32_bytes(p)?));
            let Some(id) = p.id() else { continue };
            if let Some(st) = self.optimizer_of(decayed).export_state(id) {
                for (k, t) in &st.tensors {
                    moments.push((format!("{name}/{k}"), t.shape().to_vec(), f32_bytes(t)?));
                }
                scalars.insert(name.clone(), st.scalars.clone());
            }
        }
        write_safetensors(&tmp.join("model.safetensors"), &weights)?;
        write_safetensors(&tmp.join("optimizer.safetensors"), &moments)?;
        let state = TrainerState {
            format: CHECKPOINT_FORMAT,
            config: self.cfg.clone(),
            vocab: data.vocab(),
            tokenizer: data.fingerprint().to_string(),
            step: self.step,
            tokens_seen: self.tokens_seen,
            cursor: self.cursor,
            optimizer: self.decay.0.name().to_string(),
            optimizer_scalars: scalars,
            history: self.history.clone(),
            evals: self.evals.clone(),
        };
        let json = serde_json::to_string_pretty(&state).map_err(|e| io(&tmp, "trainer.json", e))?;
        std::fs::write(tmp.join("trainer.json"), json).map_err(|e| io(&tmp, "cannot write trainer.json", e))?;
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|e| io(dir, "cannot replace the previous checkpoint", e))?;
        }
        std::fs::rename(&tmp, dir).map_err(|e| io(dir, "cannot move the checkpoint into place", e))?;
        Ok(())
    }

    /// Resumes from the checkpoint in `dir`: weights, optimizer state, step, data position and history. `cfg` is
    /// the configuration to continue with: its architecture, data shape, optimizer hyperparameters and seed must
    /// equal the checkpoint's (the step count, evaluation and checkpoint cadence, device, threads and output
    /// directory may change). A truncated or foreign file, another architecture, another tokenizer, or missing
    /// optimizer state is [`TrainError::Checkpoint`] naming what is wrong.
    pub fn resume(dir: &Path, cfg: TrainConfig, data: &TrainData) -> Result<Trainer> {
        Trainer::resume_with_optimizer(dir, cfg, data, &crate::trainer::adamw)
    }

    /// [`Trainer::resume`] for a run made with [`Trainer::with_optimizer`]: the checkpoint must name the same
    /// optimizer, and its state must import into it.
    pub fn resume_with_optimizer(
        dir: &Path,
        cfg: TrainConfig,
        data: &TrainData,
        make: &crate::trainer::OptimizerFactory,
    ) -> Result<Trainer> {
        let json_path = dir.join("trainer.json");
        let text = std::fs::read_to_string(&json_path).map_err(|e| io(&json_path, "cannot read", e))?;
        let st: TrainerState =
            serde_json::from_str(&text).map_err(|e| bad(&json_path, format!("not a trainer state: {e}")))?;
        if st.format != CHECKPOINT_FORMAT {
            return Err(bad(&json_path, format!("format {} (this build reads {CHECKPOINT_FORMAT})", st.format)));
        }
        if st.config.model != cfg.model {
            return Err(bad(
                &json_path,
                format!("the checkpoint's model is {:?}, the config asks for {:?}", st.config.model, cfg.model),
            ));
        }
        let (a, b) = (&st.config.data, &cfg.data);
        if (a.seq_len, a.batch_size, a.grad_accum) != (b.seq_len, b.batch_size, b.grad_accum) {
            return Err(bad(&json_path, "the checkpoint was trained with another seq_len / batch_size / grad_accum"));
        }
        if st.config.optim != cfg.optim || st.config.run.seed != cfg.run.seed {
            return Err(bad(&json_path, "the checkpoint was trained with other optimizer settings or another seed"));
        }
        if st.config.run.precision != cfg.run.precision {
            return Err(bad(&json_path, "the checkpoint was trained with another precision"));
        }
        if st.vocab != data.vocab() || st.tokenizer != data.fingerprint() {
            return Err(bad(
                &json_path,
                format!(
                    "the checkpoint's tokenizer is `{}` ({} tokens), the data's `{}` ({} tokens)",
                    st.tokenizer,
                    st.vocab,
                    data.fingerprint(),
                    data.vocab()
                ),
            ));
        }
        if cfg.run.steps < st.step {
            return Err(TrainError::Config(format!(
                "run.steps = {} but the checkpoint is already at step {}",
                cfg.run.steps, st.step
            )));
        }
        let mut t = Trainer::with_optimizer(cfg, data.vocab(), make)?;
        if st.optimizer != t.decay.0.name() {
            return Err(bad(
                &json_path,
                format!("optimizer `{}`, this trainer runs `{}`", st.optimizer, t.decay.0.name()),
            ));
        }
        let model_path = dir.join("model.safetensors");
        let mut weights = read_safetensors(&model_path)?;
        let device: Device = t.device;
        for (name, p) in t.params.iter_mut() {
            let (shape, vals) =
                weights.remove(name).ok_or_else(|| bad(&model_path, format!("missing parameter `{name}`")))?;
            if shape != p.shape() {
                return Err(bad(&model_path, format!("`{name}` has shape {shape:?}, the model needs {:?}", p.shape())));
            }
            p.replace_data(&Tensor::from_vec(vals, &shape, &Device::Cpu)?.to_device(&device)?)?;
        }
        if let Some(extra) = weights.keys().next() {
            return Err(bad(&model_path, format!("unexpected tensor `{extra}` (another architecture?)")));
        }
        let opt_path = dir.join("optimizer.safetensors");
        let mut moments = read_safetensors(&opt_path)?;
        for ((name, p), &decayed) in t.params.iter().zip(&t.decayed) {
            let Some(scalars) = st.optimizer_scalars.get(name) else {
                if st.step > 0 {
                    return Err(bad(&opt_path, format!("no optimizer state for `{name}` after {} steps", st.step)));
                }
                continue;
            };
            let prefix = format!("{name}/");
            let keys: Vec<String> = moments.keys().filter(|k| k.starts_with(&prefix)).cloned().collect();
            let mut state = ParamState { scalars: scalars.clone(), ..ParamState::default() };
            for k in keys {
                let (shape, vals) = moments.remove(&k).ok_or_else(|| bad(&opt_path, format!("lost `{k}`")))?;
                state.tensors.insert(k[prefix.len()..].to_string(), Tensor::from_vec(vals, &shape, &Device::Cpu)?);
            }
            let opt: &mut dyn Optimizer = if decayed { t.decay.0.as_mut() } else { t.no_decay.0.as_mut() };
            opt.import_state(p, state).map_err(|e| bad(&opt_path, format!("`{name}`: {e}")))?;
        }
        if let Some(extra) = moments.keys().next() {
            return Err(bad(&opt_path, format!("state `{extra}` belongs to no parameter")));
        }
        t.template = t.trained_model()?;
        t.step = st.step;
        t.tokens_seen = st.tokens_seen;
        t.cursor = st.cursor;
        t.history = st.history;
        t.evals = st.evals;
        Ok(t)
    }
}

/// The default checkpoint directory of a run.
pub fn checkpoint_dir(cfg: &TrainConfig) -> PathBuf {
    cfg.run.out_dir.join("checkpoint")
}
