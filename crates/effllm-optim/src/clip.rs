//! Global-norm gradient clipping (`torch.nn.utils.clip_grad_norm_` with the 2-norm).

use effllm_tensor::{Device, Gradients, Tensor, no_grad};

use crate::{OptimError, Result, check};

/// `‖(‖g₁‖₂, …, ‖gₙ‖₂)‖₂` over every gradient of `grads`, accumulated in f64 in id order.
///
/// The gradients of one device are reduced together by [`Tensor::squared_norms`] (on CUDA two launches and one
/// download for the whole set, rather than a few launches and a squared temporary per gradient).
pub fn global_norm(grads: &Gradients) -> Result<f64> {
    no_grad(|| {
        let mut groups: Vec<(Device, Vec<&Tensor>)> = Vec::new();
        for (_, g) in grads.iter() {
            match groups.iter_mut().find(|(d, _)| *d == g.device()) {
                Some((_, v)) => v.push(g),
                None => groups.push((g.device(), vec![g])),
            }
        }
        let mut sq = 0.0f64;
        for (_, gs) in &groups {
            sq += Tensor::squared_norms(gs)?.iter().sum::<f64>();
        }
        Ok(sq.sqrt())
    })
}

/// The factor PyTorch scales every gradient by: `min(1, max_norm / (total + 1e-6))`.
pub fn clip_coefficient(total_norm: f64, max_norm: f64) -> f64 {
    (max_norm / (total_norm + 1e-6)).min(1.0)
}

/// Scales all gradients by [`clip_coefficient`] so that their global norm is at most `max_norm`; returns the norm
/// before clipping. A non-finite norm is [`OptimError::NonFiniteNorm`] and leaves the gradients unchanged.
pub fn clip_grad_norm(grads: &mut Gradients, max_norm: f64) -> Result<f64> {
    check("clip_grad_norm", "max_norm", max_norm, max_norm > 0.0 && max_norm.is_finite(), "a finite value > 0")?;
    let total = global_norm(grads)?;
    if !total.is_finite() {
        return Err(OptimError::NonFiniteNorm(total));
    }
    scale_to_norm(grads, total, max_norm)?;
    Ok(total)
}

/// The scaling step of [`clip_grad_norm`] for a caller that already has the global norm `total` (finite): scales
/// every gradient by [`clip_coefficient`]`(total, max_norm)` when it is below 1.
pub fn scale_to_norm(grads: &mut Gradients, total: f64, max_norm: f64) -> Result<()> {
    let coef = clip_coefficient(total, max_norm);
    if coef < 1.0 {
        no_grad(|| -> Result<()> {
            for (_, g) in grads.iter_mut() {
                *g = g.affine(coef, 0.0)?;
            }
            Ok(())
        })?;
    }
    Ok(())
}
