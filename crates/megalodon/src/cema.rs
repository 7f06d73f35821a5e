//! CEMA: the multi-dimensional damped complex exponential moving average, in the reference code's
//! parameterisation, with an FFT path for training and prefill and the recurrence for decoding.

use effllm_tensor::rng::CounterRng;
use effllm_tensor::{DType, Device, Tensor, autograd};

use crate::cema_ops::{decayed_sum, power_sum};
use crate::conv::causal_conv;
use crate::error::{MegalodonError, Result};

/// The carried CEMA state `h ∈ ℂ^{B×D×N}` as real and imaginary parts. It may be tracked: gradients flow into the
/// state a call starts from and out of the state it returns (the chunk-parallel training contract).
#[derive(Clone, Debug)]
pub struct CemaState {
    h_re: Tensor,
    h_im: Tensor,
    /// Known to be exactly zero (a fresh state): the state-bias term is skipped.
    zero: bool,
}

impl CemaState {
    /// A state from its real and imaginary parts, each `[B, D, N]`.
    pub fn new(h_re: Tensor, h_im: Tensor) -> Result<CemaState> {
        if h_re.rank() != 3 || h_re.shape() != h_im.shape() {
            return Err(MegalodonError::Shape {
                op: "CemaState::new",
                expected: format!("h_re and h_im of one shape [B, D, N], h_im is {:?}", h_im.shape()),
                found: h_re.shape().to_vec(),
            });
        }
        Ok(CemaState { h_re, h_im, zero: false })
    }

    /// Real part, `[B, D, N]`.
    pub fn h_re(&self) -> &Tensor {
        &self.h_re
    }

    /// Imaginary part, `[B, D, N]`.
    pub fn h_im(&self) -> &Tensor {
        &self.h_im
    }

    /// Batch size.
    pub fn batch(&self) -> usize {
        self.h_re.shape()[0]
    }

    /// The same values without graph nodes (for decoding loops that must not grow a graph).
    pub fn detach(&self) -> CemaState {
        CemaState { h_re: self.h_re.detach(), h_im: self.h_im.detach(), zero: self.zero }
    }
}

/// The derived coefficients, each `[D, N]`, as differentiable functions of the raw parameters:
/// `p = σ(alpha)`, `q = e^{log_mag + i·phase}` with `log_mag = ln(1 − σ(alpha)σ(delta))` and
/// `phase[d, n] = σ(theta_d)·2π(n + 1)/N`, and `γ = (gamma_re + i·gamma_im)/√N`.
#[derive(Clone, Debug)]
pub struct CemaCoeffs {
    /// `p`, real in (0, 1).
    pub p: Tensor,
    /// `ln |q|`, negative.
    pub log_mag: Tensor,
    /// `arg q`.
    pub phase: Tensor,
    /// `Re γ` (already divided by √N).
    pub gamma_re: Tensor,
    /// `Im γ` (already divided by √N).
    pub gamma_im: Tensor,
}

/// One CEMA layer over `D` channels with expansion `N`.
#[derive(Clone, Debug)]
pub struct Cema {
    d: usize,
    n: usize,
    alpha: Tensor,
    delta: Tensor,
    theta: Tensor,
    gamma_re: Tensor,
    gamma_im: Tensor,
    omega: Tensor,
}

/// The parameter names, in [`Cema::parameters`] order.
pub const CEMA_PARAM_NAMES: [&str; 6] = ["alpha", "delta", "theta", "gamma_re", "gamma_im", "omega"];

fn tensor(v: Vec<f64>, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?.to_dtype(dtype)?.to_device(device)?)
}

impl Cema {
    /// The reference initialisation, seeded: alpha, delta ~ N(0, 0.2²); theta = logit(f_d) where {f_d} is
    /// {D^(−k/D) : k = 1..D} randomly permuted over d; gamma_re ~ N(0, 1), gamma_im = 0; omega ~ N(0, 0.25²)
    /// truncated to [−1, 1].
    pub fn new(d: usize, n: usize, dtype: DType, device: &Device, seed: u64) -> Result<Cema> {
        if d == 0 || n == 0 {
            return Err(MegalodonError::Config(format!("CEMA needs D > 0 and N > 0, got D = {d}, N = {n}")));
        }
        let rng = CounterRng::new(seed, 0x4345_4d41); // "CEMA"
        let normal = |off: u64, len: usize, std: f64| -> Vec<f64> {
            (0..len as u64).map(|i| std * rng.normal_at(off + i)).collect()
        };
        let alpha = normal(0, d * n, 0.2);
        let delta = normal(1 << 32, d * n, 0.2);
        let gamma_re = normal(2 << 32, d * n, 1.0);
        // Fisher–Yates on seeded uniforms.
        let mut perm: Vec<usize> = (1..=d).collect();
        for i in (1..d).rev() {
            let j = (rng.uniform_f64_at((3 << 32) + i as u64) * (i + 1) as f64) as usize;
            perm.swap(i, j.min(i));
        }
        let theta: Vec<f64> = perm
            .iter()
            .map(|&k| {
                let f = (d as f64).powf(-(k as f64) / d as f64);
                (f / (1.0 - f)).ln()
            })
            .collect();
        let omega: Vec<f64> = (0..d as u64)
            .map(|i| {
                // Redraw until inside [−1, 1] (truncated normal); each channel has its own index stream.
                (0..)
                    .map(|r: u64| 0.25 * rng.normal_at((4 << 32) + i * 4096 + r))
                    .find(|v: &f64| v.abs() <= 1.0)
                    .unwrap_or(0.0)
            })
            .collect();
        Cema::from_tensors(
            tensor(alpha, &[d, n], dtype, device)?,
            tensor(delta, &[d, n], dtype, device)?,
            tensor(theta, &[d], dtype, device)?,
            tensor(gamma_re, &[d, n], dtype, device)?,
            Tensor::zeros(&[d, n], dtype, device)?,
            tensor(omega, &[d], dtype, device)?,
        )
    }

    /// A layer from raw parameters: alpha, delta, gamma_re, gamma_im `[D, N]`, theta and omega `[D]`, one float
    /// dtype and device.
    pub fn from_tensors(
        alpha: Tensor,
        delta: Tensor,
        theta: Tensor,
        gamma_re: Tensor,
        gamma_im: Tensor,
        omega: Tensor,
    ) -> Result<Cema> {
        let [d, n] = *alpha.shape() else {
            return Err(MegalodonError::Shape {
                op: "Cema",
                expected: "alpha = [D, N]".into(),
                found: alpha.shape().to_vec(),
            });
        };
        for (name, t, want) in [
            ("delta", &delta, vec![d, n]),
            ("theta", &theta, vec![d]),
            ("gamma_re", &gamma_re, vec![d, n]),
            ("gamma_im", &gamma_im, vec![d, n]),
            ("omega", &omega, vec![d]),
        ] {
            if t.shape() != want.as_slice() {
                return Err(MegalodonError::Shape {
                    op: "Cema",
                    expected: format!("{name} = {want:?}"),
                    found: t.shape().to_vec(),
                });
            }
            if t.dtype() != alpha.dtype() || t.device() != alpha.device() {
                return Err(MegalodonError::InvalidArgument {
                    op: "Cema",
                    msg: format!(
                        "{name} is {:?} on {:?}, alpha is {:?} on {:?}",
                        t.dtype(),
                        t.device(),
                        alpha.dtype(),
                        alpha.device()
                    ),
                });
            }
        }
        if !alpha.dtype().is_float() {
            return Err(MegalodonError::InvalidArgument {
                op: "Cema",
                msg: format!("parameters must be float, got {:?}", alpha.dtype()),
            });
        }
        Ok(Cema { d, n, alpha, delta, theta, gamma_re, gamma_im, omega })
    }

    /// Channels `D`.
    pub fn dim(&self) -> usize {
        self.d
    }

    /// Expansion `N`.
    pub fn ndim(&self) -> usize {
        self.n
    }

    /// The raw parameters in [`CEMA_PARAM_NAMES`] order.
    pub fn parameters(&self) -> [&Tensor; 6] {
        [&self.alpha, &self.delta, &self.theta, &self.gamma_re, &self.gamma_im, &self.omega]
    }

    /// The same layer with every parameter passed through `f` (e.g. `requires_grad`, a device move).
    pub fn map_parameters(&self, mut f: impl FnMut(&Tensor) -> Result<Tensor>) -> Result<Cema> {
        Cema::from_tensors(
            f(&self.alpha)?,
            f(&self.delta)?,
            f(&self.theta)?,
            f(&self.gamma_re)?,
            f(&self.gamma_im)?,
            f(&self.omega)?,
        )
    }

    /// A fresh (zero) state for `batch` rows.
    pub fn init_state(&self, batch: usize) -> Result<CemaState> {
        let z = Tensor::zeros(&[batch, self.d, self.n], self.alpha.dtype(), &self.alpha.device())?;
        Ok(CemaState { h_re: z.clone(), h_im: z, zero: true })
    }

    /// The coefficients `p`, `ln|q|`, `arg q`, `γ` (differentiable in the raw parameters).
    pub fn coeffs(&self) -> Result<CemaCoeffs> {
        let (d, n) = (self.d, self.n);
        let sa = self.alpha.sigmoid()?;
        let log_mag = sa.mul(&self.delta.sigmoid()?)?.affine(-1.0, 1.0)?.ln()?;
        let steps: Vec<f64> = (1..=n).map(|i| 2.0 * std::f64::consts::PI * i as f64 / n as f64).collect();
        let steps = tensor(steps, &[1, n], self.alpha.dtype(), &self.alpha.device())?;
        let phase = self.theta.sigmoid()?.reshape(&[d, 1])?.mul(&steps)?;
        let s = 1.0 / (n as f64).sqrt();
        Ok(CemaCoeffs {
            p: sa,
            log_mag,
            phase,
            gamma_re: self.gamma_re.affine(s, 0.0)?,
            gamma_im: self.gamma_im.affine(s, 0.0)?,
        })
    }

    /// The convolution kernel `k[d, j] = Re(Σ_n γ_n p_n q_n^j)`, `j < len`, `[D, len]`.
    pub fn kernel(&self, len: usize) -> Result<Tensor> {
        let co = self.coeffs()?;
        self.kernel_from(&co, len)
    }

    fn kernel_from(&self, co: &CemaCoeffs, len: usize) -> Result<Tensor> {
        let c_re = co.gamma_re.mul(&co.p)?.unsqueeze(0)?;
        let c_im = co.gamma_im.mul(&co.p)?.unsqueeze(0)?;
        Ok(power_sum(&c_re, &c_im, &co.log_mag, &co.phase, len, 0)?.reshape(&[self.d, len])?)
    }

    fn check_input(&self, op: &'static str, x: &Tensor, state: &CemaState) -> Result<(usize, usize)> {
        let [b, l, d] = *x.shape() else {
            return Err(MegalodonError::Shape {
                op,
                expected: format!("x = [B, L, {}]", self.d),
                found: x.shape().to_vec(),
            });
        };
        if d != self.d {
            return Err(MegalodonError::Shape {
                op,
                expected: format!("x = [B, L, {}]", self.d),
                found: x.shape().to_vec(),
            });
        }
        if state.h_re.shape() != [b, self.d, self.n] {
            return Err(MegalodonError::State {
                op,
                msg: format!(
                    "state is {:?}, this layer and batch need [{b}, {}, {}]",
                    state.h_re.shape(),
                    self.d,
                    self.n
                ),
            });
        }
        Ok((b, l))
    }

    /// The parallel form over `x` = `[B, L, D]`, continuing from `state` and advancing it:
    /// `y = causal_conv(x, k) + b(h₀) + ω ⊙ x` with the state bias `b[b, t, d] = Re Σ_n γ_n q_n^{t+1} h₀[b, d, n]`
    /// and the new state `h_L = p Σ_j q^{L−1−j} x_j + q^L h₀`. The convolution runs by FFT. Differentiable in `x`,
    /// the parameters and the incoming state; the returned state is differentiable too.
    pub fn forward(&self, x: &Tensor, state: &mut CemaState) -> Result<Tensor> {
        const OP: &str = "Cema::forward";
        let (_, l) = self.check_input(OP, x, state)?;
        if l == 0 {
            return Ok(x.clone());
        }
        let co = self.coeffs()?;
        let k = self.kernel_from(&co, l)?;
        let xt = x.permute(&[0, 2, 1])?.contiguous()?;
        let mut y = causal_conv(&xt, &k)?.permute(&[0, 2, 1])?.add(&x.mul(&self.omega)?)?;
        let (h_re, h_im) = (&state.h_re, &state.h_im);
        if !state.zero {
            // b[b, t, d] = Re Σ_n (γ h₀)[b, d, n] q^{t+1}.
            let c_re = co.gamma_re.mul(h_re)?.sub(&co.gamma_im.mul(h_im)?)?;
            let c_im = co.gamma_re.mul(h_im)?.add(&co.gamma_im.mul(h_re)?)?;
            let bias = power_sum(&c_re, &c_im, &co.log_mag, &co.phase, l, 1)?; // [B, D, L]
            y = y.add(&bias.permute(&[0, 2, 1])?)?;
        }
        // New state: p · Σ_j q^{L−1−j} x_j + q^L h₀.
        let s = decayed_sum(x, &co.log_mag, &co.phase)?;
        let mut new_re = s.narrow(0, 0, 1)?.squeeze(0)?.mul(&co.p)?;
        let mut new_im = s.narrow(0, 1, 1)?.squeeze(0)?.mul(&co.p)?;
        if !state.zero {
            let mag = co.log_mag.affine(l as f64, 0.0)?.exp()?;
            let ang = co.phase.affine(l as f64, 0.0)?;
            let (ql_re, ql_im) = (mag.mul(&ang.cos()?)?, mag.mul(&ang.sin()?)?);
            new_re = new_re.add(&ql_re.mul(h_re)?.sub(&ql_im.mul(h_im)?)?)?;
            new_im = new_im.add(&ql_re.mul(h_im)?.add(&ql_im.mul(h_re)?)?)?;
        }
        *state = CemaState { h_re: new_re.contiguous()?, h_im: new_im.contiguous()?, zero: false };
        Ok(y)
    }

    /// The recurrence `h_t = p ⊙ x_t + q ⊙ h_{t−1}`, `y_t = Re(Σ_n γ_n h_{t,n}) + ω x_t` over `x` = `[B, L, D]`,
    /// continuing from `state` and advancing it: the decoding path (O(1) per token). It has no backward rule: with
    /// grad mode on and a tracked input or parameter it returns [`MegalodonError::NotDifferentiable`].
    pub fn forward_scan(&self, x: &Tensor, state: &mut CemaState) -> Result<Tensor> {
        const OP: &str = "Cema::forward_scan";
        let (b, l) = self.check_input(OP, x, state)?;
        let tracked = x.is_tracked()
            || state.h_re.is_tracked()
            || state.h_im.is_tracked()
            || self.parameters().iter().any(|t| t.is_tracked());
        if tracked && autograd::is_grad_enabled() {
            return Err(MegalodonError::NotDifferentiable {
                op: OP,
                msg: "the recurrence is the decoding path; train through Cema::forward (FFT) or run inside no_grad"
                    .into(),
            });
        }
        let co = self.coeffs()?;
        let (y, h_re, h_im) = if let Device::Cuda(_) = x.device()
            && x.dtype() == DType::F32
            && self.n <= crate::cuda::MAX_SCAN_N
        {
            crate::cuda::cema_scan(x, &co, &self.omega, &state.h_re, &state.h_im)?
        } else {
            let v = |t: &Tensor| t.contiguous().and_then(|t| t.to_vec_f64());
            let (p, lm, ph, gr, gi, om) =
                (v(&co.p)?, v(&co.log_mag)?, v(&co.phase)?, v(&co.gamma_re)?, v(&co.gamma_im)?, v(&self.omega)?);
            let (mut hr, mut hi) = (v(&state.h_re)?, v(&state.h_im)?);
            let xv = v(x)?;
            let (d, n) = (self.d, self.n);
            let q: Vec<(f64, f64)> =
                lm.iter().zip(&ph).map(|(&m, &a)| (m.exp() * a.cos(), m.exp() * a.sin())).collect();
            let mut y = vec![0.0; b * l * d];
            for bi in 0..b {
                for t in 0..l {
                    for di in 0..d {
                        let xval = xv[(bi * l + t) * d + di];
                        let mut acc = 0.0;
                        for ni in 0..n {
                            let (i, s) = (di * n + ni, (bi * d + di) * n + ni);
                            let (r, im) = (hr[s], hi[s]);
                            let (nr, ni_) = (q[i].0 * r - q[i].1 * im + p[i] * xval, q[i].0 * im + q[i].1 * r);
                            hr[s] = nr;
                            hi[s] = ni_;
                            acc += gr[i] * nr - gi[i] * ni_;
                        }
                        y[(bi * l + t) * d + di] = acc + om[di] * xval;
                    }
                }
            }
            let (dt, dev) = (x.dtype(), x.device());
            (tensor(y, &[b, l, d], dt, &dev)?, tensor(hr, &[b, d, n], dt, &dev)?, tensor(hi, &[b, d, n], dt, &dev)?)
        };
        *state = CemaState { h_re, h_im, zero: false };
        Ok(y)
    }

    /// One decoding step, `x_t` = `[B, D]` → `[B, D]`: [`Cema::forward_scan`] with `L = 1`.
    pub fn step(&self, x_t: &Tensor, state: &mut CemaState) -> Result<Tensor> {
        if x_t.rank() != 2 {
            return Err(MegalodonError::Shape {
                op: "Cema::step",
                expected: format!("x_t = [B, {}]", self.d),
                found: x_t.shape().to_vec(),
            });
        }
        Ok(self.forward_scan(&x_t.unsqueeze(1)?, state)?.squeeze(1)?)
    }

    /// The paper's output projection `η = γ · e^{−iφ}` (raw scale, like `gamma_re`/`gamma_im`), under which the
    /// paper's recurrence `h_t = e^{iφ}(p x_t + |q| h_{t−1})`, `y_t = Re(ηᵀh_t)/√N + ω x_t` equals this layer.
    pub fn to_paper_eta(&self) -> Result<(Tensor, Tensor)> {
        let ph = self.coeffs()?.phase;
        let (c, s) = (ph.cos()?, ph.sin()?);
        // (γr + iγi)(c − is) = (γr c + γi s) + i(γi c − γr s)
        Ok((self.gamma_re.mul(&c)?.add(&self.gamma_im.mul(&s)?)?, self.gamma_im.mul(&c)?.sub(&self.gamma_re.mul(&s)?)?))
    }

    /// The layer whose code-form projection is `γ = η · e^{iφ}` for the paper's `η` (raw scale), all other
    /// parameters kept.
    pub fn with_paper_eta(&self, eta_re: &Tensor, eta_im: &Tensor) -> Result<Cema> {
        let ph = self.coeffs()?.phase;
        let (c, s) = (ph.cos()?, ph.sin()?);
        let gr = eta_re.mul(&c)?.sub(&eta_im.mul(&s)?)?;
        let gi = eta_im.mul(&c)?.add(&eta_re.mul(&s)?)?;
        Cema::from_tensors(self.alpha.clone(), self.delta.clone(), self.theta.clone(), gr, gi, self.omega.clone())
    }
}
