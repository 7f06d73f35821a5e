//! [`train_curve`]: train one configuration for its `run.steps` and record the validation loss against training
//! tokens — what an architecture comparison (Megalodon against an equal-parameter Llama, the same data order,
//! seed and schedule) plots. Used by the `megalodon` `bench-all` scenario and the `megalodon_vs_llama` example.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::Result;
use crate::config::TrainConfig;
use crate::data::TrainData;
use crate::trainer::Trainer;

/// One evaluation on a [`Curve`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    /// Optimizer steps completed.
    pub step: usize,
    /// Training tokens consumed.
    pub tokens: u64,
    /// Mean training loss over the steps since the previous point (`None` at step 0).
    pub train_loss: Option<f64>,
    /// Validation loss (nats per token).
    pub val_loss: f64,
}

/// The record of one training run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Curve {
    /// `llama` or `megalodon`.
    pub architecture: String,
    /// Trainable scalars.
    pub parameters: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Evaluations at step 0, every `run.eval_every` steps and after the last.
    pub points: Vec<CurvePoint>,
    /// Wall-clock seconds of the training steps (evaluations excluded).
    pub train_seconds: f64,
    /// Training tokens per second over the run.
    pub tokens_per_s: f64,
}

/// Trains a fresh model of `cfg` on `data` for `cfg.run.steps` steps, evaluating at step 0, every
/// `cfg.run.eval_every` steps and after the last; `progress(step, val_loss)` hears every step (with the
/// validation loss on evaluation steps). Two calls with configs that differ only in the model see the same rows
/// in the same order (the order depends only on the seed and the data).
pub fn train_curve(
    cfg: &TrainConfig,
    data: &mut TrainData,
    progress: &mut dyn FnMut(usize, Option<f64>),
) -> Result<Curve> {
    let mut trainer = Trainer::new(cfg.clone(), data.vocab())?;
    let first = trainer.evaluate(data)?;
    let mut points = vec![CurvePoint { step: 0, tokens: 0, train_loss: None, val_loss: first.loss }];
    progress(0, Some(first.loss));
    let (mut sum, mut n, mut secs) = (0.0, 0usize, 0.0);
    for s in 1..=cfg.run.steps {
        let t0 = Instant::now();
        let r = trainer.train_step(data)?;
        secs += t0.elapsed().as_secs_f64();
        (sum, n) = (sum + r.loss, n + 1);
        if s.is_multiple_of(cfg.run.eval_every) || s == cfg.run.steps {
            let e = trainer.evaluate(data)?;
            points.push(CurvePoint {
                step: s,
                tokens: trainer.tokens_seen(),
                train_loss: Some(sum / n as f64),
                val_loss: e.loss,
            });
            (sum, n) = (0.0, 0);
            progress(s, Some(e.loss));
        } else {
            progress(s, None);
        }
    }
    Ok(Curve {
        architecture: cfg.model.architecture.name().to_string(),
        parameters: trainer.num_parameters(),
        lr: cfg.optim.lr,
        points,
        train_seconds: secs,
        tokens_per_s: trainer.tokens_seen() as f64 / secs.max(1e-9),
    })
}
