//! Layer-wise updates: each parameter is stepped inside the backward sweep, as soon as its gradient is final.

use std::collections::HashMap;

use effllm_optim::{OptimError, Optimizer};
use effllm_tensor::{Gradients, Tensor, TensorId};

use crate::{GaLoreError, Result};

/// What [`backward_layerwise`] did.
#[derive(Debug)]
pub struct LayerwiseOutcome {
    /// Parameters updated.
    pub updated: usize,
    /// The largest number of gradient bytes held at once during the sweep, measured at each callback before the
    /// gradient was taken (the full-gradient memory layer-wise mode saves is the difference to the sum over all
    /// parameters).
    pub peak_gradient_bytes: usize,
    /// Gradients of reached leaves that are not in `params` (left in the store).
    pub other_gradients: Gradients,
}

/// Backward from the scalar `loss`; every parameter of `params` is updated by `opt` from inside the sweep (through
/// [`Gradients::accumulate_with`]'s gradient-ready callback) and its gradient is freed at once — galore-torch's
/// `galore_adamw8bit_per_layer` mode without the second optimizer per parameter.
///
/// There is no global gradient clipping here: the global norm is unknown until the sweep ends, after every update
/// (the reference's clipping is a silent no-op in this mode). Gradient accumulation over micro-batches is not
/// possible either: each sweep updates. Parameters of `params` that `loss` does not reach are left alone. An
/// optimizer error stops the sweep and is returned; parameters updated before it keep their update.
pub fn backward_layerwise(loss: &Tensor, params: &mut [Tensor], opt: &mut dyn Optimizer) -> Result<LayerwiseOutcome> {
    let mut index: HashMap<TensorId, usize> = HashMap::new();
    for (i, p) in params.iter().enumerate() {
        match p.id() {
            Some(id) if p.is_leaf() => {
                index.insert(id, i);
            }
            _ => return Err(GaLoreError::Optim(OptimError::NotAParameter { optimizer: "backward_layerwise" })),
        }
    }
    let mut updated = 0;
    let mut peak = 0;
    let mut failure: Option<OptimError> = None;
    let mut store = Gradients::new();
    let swept = store.accumulate_with(loss, None, &mut |id, store| {
        let Some(&i) = index.get(&id) else { return Ok(()) };
        peak = peak.max(store.nbytes());
        let Some(g) = store.take_id(id) else { return Ok(()) };
        match opt.step_param(&mut params[i], &g) {
            Ok(()) => {
                updated += 1;
                Ok(())
            }
            Err(e) => {
                let msg = e.to_string();
                failure = Some(e);
                Err(effllm_tensor::Error::InvalidArgument { op: "backward_layerwise", msg })
            }
        }
    });
    if let Some(e) = failure {
        return Err(GaLoreError::Optim(e));
    }
    swept?;
    Ok(LayerwiseOutcome { updated, peak_gradient_bytes: peak, other_gradients: store })
}
