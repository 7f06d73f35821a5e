//! Naive f64 versions of the optimizers, the schedule and clipping: the oracle of the tests. One parameter is a
//! `Vec<f64>`; nothing here is meant to be fast.

/// State of [`adamw_step`] for one parameter.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AdamState {
    /// Steps taken.
    pub step: u64,
    /// First moment.
    pub m: Vec<f64>,
    /// Second moment.
    pub v: Vec<f64>,
    /// Running maximum of the second moment (AMSGrad).
    pub v_max: Vec<f64>,
}

/// One AdamW step of `p` with gradient `g` (PyTorch's algorithm, see [`crate::AdamW`]).
#[allow(clippy::too_many_arguments)]
pub fn adamw_step(
    p: &mut [f64],
    g: &[f64],
    s: &mut AdamState,
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    amsgrad: bool,
) {
    if s.m.is_empty() {
        s.m = vec![0.0; p.len()];
        s.v = vec![0.0; p.len()];
        s.v_max = vec![0.0; p.len()];
    }
    s.step += 1;
    let t = s.step as i32;
    let bc1 = 1.0 - beta1.powi(t);
    let bc2 = 1.0 - beta2.powi(t);
    for i in 0..p.len() {
        p[i] *= 1.0 - lr * weight_decay;
        s.m[i] = beta1 * s.m[i] + (1.0 - beta1) * g[i];
        s.v[i] = beta2 * s.v[i] + (1.0 - beta2) * g[i] * g[i];
        s.v_max[i] = s.v_max[i].max(s.v[i]);
        let second = if amsgrad { s.v_max[i] } else { s.v[i] };
        p[i] -= lr / bc1 * s.m[i] / (second.sqrt() / bc2.sqrt() + eps);
    }
}

/// One SGD step of `p` with gradient `g` (PyTorch's algorithm, see [`crate::Sgd`]); `buf` is the momentum buffer,
/// `None` before the first step.
#[allow(clippy::too_many_arguments)]
pub fn sgd_step(
    p: &mut [f64],
    g: &[f64],
    buf: &mut Option<Vec<f64>>,
    lr: f64,
    momentum: f64,
    dampening: f64,
    weight_decay: f64,
    nesterov: bool,
) {
    let mut d: Vec<f64> = g.iter().zip(p.iter()).map(|(g, p)| g + weight_decay * p).collect();
    if momentum != 0.0 {
        let b = match buf.take() {
            None => d.clone(),
            Some(b) => b.iter().zip(&d).map(|(b, d)| momentum * b + (1.0 - dampening) * d).collect(),
        };
        d = if nesterov { d.iter().zip(&b).map(|(d, b)| d + momentum * b).collect() } else { b.clone() };
        *buf = Some(b);
    }
    for (p, d) in p.iter_mut().zip(d) {
        *p -= lr * d;
    }
}

/// The warmup + cosine learning rate of step `s` (see [`crate::schedule::WarmupCosine`]).
pub fn warmup_cosine(s: u64, peak: f64, min: f64, warmup: u64, total: u64) -> f64 {
    if s < warmup {
        peak * (s as f64 + 1.0) / warmup as f64
    } else if s >= total {
        min
    } else {
        let x = (s - warmup) as f64 / (total - warmup) as f64;
        min + (peak - min) * (1.0 + (std::f64::consts::PI * x).cos()) / 2.0
    }
}

/// Global 2-norm of several gradients, and the gradients clipped to `max_norm` as PyTorch does.
pub fn clip_grad_norm(grads: &[Vec<f64>], max_norm: f64) -> (f64, Vec<Vec<f64>>) {
    let total = grads.iter().flatten().map(|x| x * x).sum::<f64>().sqrt();
    let coef = (max_norm / (total + 1e-6)).min(1.0);
    (total, grads.iter().map(|g| g.iter().map(|x| x * coef).collect()).collect())
}
