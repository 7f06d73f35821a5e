//! Shared helpers of the megalodon tests: seeded data, tensors, relative errors and central finite differences.
#![allow(dead_code)]

use effllm_tensor::rng::CounterRng;
use effllm_tensor::{Device, Tensor};
use megalodon::reference::CemaParams;
use megalodon::{Cema, CemaState};
use realfft::num_complex::Complex64;

/// `len` values `N(mean, std²)` from `(seed, stream)`.
pub fn randn(len: usize, seed: u64, stream: u64, mean: f64, std: f64) -> Vec<f64> {
    let rng = CounterRng::new(seed, stream);
    (0..len as u64).map(|i| mean + std * rng.normal_at(i)).collect()
}

pub fn t64(v: Vec<f64>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

pub fn v64(t: &Tensor) -> Vec<f64> {
    t.contiguous().unwrap().to_vec_f64().unwrap()
}

/// ‖a − b‖ / ‖b‖ (absolute when ‖b‖ is tiny).
pub fn rel(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt();
    let den: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    num / den.max(1e-30)
}

pub fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

/// Random CEMA parameters as the spec's tests draw them: alpha, delta ~ N(0, 0.2²)·5 (wider than init, so damping
/// varies), theta ~ N(0, 1), gamma re/im ~ N(0, 1), omega ~ N(0, 0.25²).
pub fn cema_params(d: usize, n: usize, seed: u64) -> CemaParams {
    CemaParams {
        d,
        n,
        alpha: randn(d * n, seed, 1, 0.0, 1.0),
        delta: randn(d * n, seed, 2, 0.0, 1.0),
        theta: randn(d, seed, 3, 0.0, 1.0),
        gamma_re: randn(d * n, seed, 4, 0.0, 1.0),
        gamma_im: randn(d * n, seed, 5, 0.0, 1.0),
        omega: randn(d, seed, 6, 0.0, 0.25),
    }
}

pub fn cema_from(p: &CemaParams) -> Cema {
    let (d, n) = (p.d, p.n);
    Cema::from_tensors(
        t64(p.alpha.clone(), &[d, n]),
        t64(p.delta.clone(), &[d, n]),
        t64(p.theta.clone(), &[d]),
        t64(p.gamma_re.clone(), &[d, n]),
        t64(p.gamma_im.clone(), &[d, n]),
        t64(p.omega.clone(), &[d]),
    )
    .unwrap()
}

/// A random complex state `[B, D, N]` as the reference's values and as a `CemaState`.
pub fn random_state(b: usize, d: usize, n: usize, seed: u64) -> (Vec<Complex64>, CemaState) {
    let re = randn(b * d * n, seed, 10, 0.0, 1.0);
    let im = randn(b * d * n, seed, 11, 0.0, 1.0);
    let c = re.iter().zip(&im).map(|(&r, &i)| Complex64::new(r, i)).collect();
    (c, CemaState::new(t64(re, &[b, d, n]), t64(im, &[b, d, n])).unwrap())
}

pub fn state_values(s: &CemaState) -> Vec<Complex64> {
    v64(s.h_re()).into_iter().zip(v64(s.h_im())).map(|(r, i)| Complex64::new(r, i)).collect()
}

pub fn crel(a: &[Complex64], b: &[Complex64]) -> f64 {
    let flat = |v: &[Complex64]| v.iter().flat_map(|c| [c.re, c.im]).collect::<Vec<f64>>();
    rel(&flat(a), &flat(b))
}

/// Checks the gradient `analytic` of `loss` at `x0` against central differences on up to `max_coords` coordinates
/// (spread over the tensor), with step `h` and relative tolerance `tol`.
pub fn check_grad(name: &str, x0: &[f64], analytic: &[f64], loss: &dyn Fn(&[f64]) -> f64, max_coords: usize, tol: f64) {
    assert_eq!(x0.len(), analytic.len(), "{name}: gradient length");
    let h = 1e-5;
    let stride = (x0.len() / max_coords.max(1)).max(1);
    let scale = analytic.iter().map(|g| g.abs()).fold(0.0, f64::max).max(1e-3);
    for i in (0..x0.len()).step_by(stride) {
        let (mut p, mut m) = (x0.to_vec(), x0.to_vec());
        p[i] += h;
        m[i] -= h;
        let fd = (loss(&p) - loss(&m)) / (2.0 * h);
        assert!(
            (fd - analytic[i]).abs() <= tol * scale,
            "{name}[{i}]: finite difference {fd} vs analytic {} (scale {scale})",
            analytic[i]
        );
    }
}
