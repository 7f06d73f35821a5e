//! Helpers shared by the trainer's test binaries.

use effllm_train::Trainer;

/// Every master weight of `t`, flattened in parameter order.
pub fn params_f64(t: &Trainer) -> Vec<f64> {
    t.parameters().iter().flat_map(|(_, p)| p.to_vec_f64().unwrap()).collect()
}

/// `‖a − b‖ / ‖b‖`.
pub fn rel_l2(a: &[f64], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt();
    num / b.iter().map(|y| y * y).sum::<f64>().sqrt().max(1e-300)
}
