//! Naive f64 GaLore: dense row-major matrices, triple loops, the formulas of the crate docs written out. The
//! oracle of the tests; nothing here is fast.

use crate::AdafactorConfig;
use crate::inner::{AdamConfig, DecayMode, EpsMode};

/// A dense row-major f64 matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct Mat {
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// `rows · cols` values, row-major.
    pub data: Vec<f64>,
}

impl Mat {
    /// A matrix from f32 values.
    pub fn from_f32(rows: usize, cols: usize, data: &[f32]) -> Mat {
        assert_eq!(data.len(), rows * cols, "reference::Mat::from_f32: {} values for {rows}x{cols}", data.len());
        Mat { rows, cols, data: data.iter().map(|&x| x as f64).collect() }
    }

    /// The zero matrix.
    pub fn zeros(rows: usize, cols: usize) -> Mat {
        Mat { rows, cols, data: vec![0.0; rows * cols] }
    }

    /// The identity.
    pub fn eye(n: usize) -> Mat {
        let mut m = Mat::zeros(n, n);
        (0..n).for_each(|i| m.data[i * n + i] = 1.0);
        m
    }

    /// Entry `(i, j)`.
    pub fn at(&self, i: usize, j: usize) -> f64 {
        self.data[i * self.cols + j]
    }

    /// The transpose.
    pub fn t(&self) -> Mat {
        let mut out = Mat::zeros(self.cols, self.rows);
        for i in 0..self.rows {
            for j in 0..self.cols {
                out.data[j * self.rows + i] = self.at(i, j);
            }
        }
        out
    }

    /// `self · rhs`.
    pub fn matmul(&self, rhs: &Mat) -> Mat {
        assert_eq!(self.cols, rhs.rows, "reference::Mat::matmul: inner dimensions");
        let mut out = Mat::zeros(self.rows, rhs.cols);
        for i in 0..self.rows {
            for j in 0..rhs.cols {
                out.data[i * rhs.cols + j] = (0..self.cols).map(|k| self.at(i, k) * rhs.at(k, j)).sum();
            }
        }
        out
    }

    /// `a · self` elementwise.
    pub fn scaled(&self, a: f64) -> Mat {
        Mat { rows: self.rows, cols: self.cols, data: self.data.iter().map(|x| a * x).collect() }
    }

    /// The Frobenius norm.
    pub fn norm(&self) -> f64 {
        self.data.iter().map(|x| x * x).sum::<f64>().sqrt()
    }

    /// `‖self − other‖_F / ‖other‖_F` (absolute when `other` is zero).
    pub fn rel_err(&self, other: &Mat) -> f64 {
        assert_eq!((self.rows, self.cols), (other.rows, other.cols), "reference::Mat::rel_err: shapes");
        let d = self.data.iter().zip(&other.data).map(|(a, b)| (a - b) * (a - b)).sum::<f64>().sqrt();
        let n = other.norm();
        if n > 0.0 { d / n } else { d }
    }
}

/// A basis: `P` (`m × r`, left), `P` (`r × n`, right), or `(A, B)` (both).
#[derive(Clone, Debug, PartialEq)]
pub enum RefBasis {
    /// `R = Pᵀ G`.
    Left(Mat),
    /// `R = G Pᵀ`.
    Right(Mat),
    /// `R = Aᵀ G Bᵀ`.
    Both(Mat, Mat),
}

/// `R`, the projection of `g`.
pub fn project(g: &Mat, basis: &RefBasis) -> Mat {
    match basis {
        RefBasis::Left(p) => p.t().matmul(g),
        RefBasis::Right(p) => g.matmul(&p.t()),
        RefBasis::Both(a, b) => a.t().matmul(g).matmul(&b.t()),
    }
}

/// `α · back(n)`.
pub fn project_back(n: &Mat, basis: &RefBasis, scale: f64) -> Mat {
    let full = match basis {
        RefBasis::Left(p) => p.matmul(n),
        RefBasis::Right(p) => n.matmul(p),
        RefBasis::Both(a, b) => a.matmul(n).matmul(b),
    };
    full.scaled(scale)
}

/// Adam moments and step count of one parameter.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamMoments {
    /// First moment `M`.
    pub m: Mat,
    /// Second moment `V`.
    pub v: Mat,
    /// Steps taken.
    pub step: u64,
}

/// One GaLore-Adam step of `w` with gradient `g` (§2.3 of the spec), on the given basis and scale, or a plain Adam
/// step when `basis` is `None`. The moments are created (zero, in `R`'s shape) on the first call.
pub fn adam_step(
    w: &mut Mat,
    g: &Mat,
    moments: &mut Option<AdamMoments>,
    basis: Option<(&RefBasis, f64)>,
    cfg: &AdamConfig,
) {
    let r = match basis {
        Some((b, _)) => project(g, b),
        None => g.clone(),
    };
    let st = moments.get_or_insert_with(|| AdamMoments {
        m: Mat::zeros(r.rows, r.cols),
        v: Mat::zeros(r.rows, r.cols),
        step: 0,
    });
    st.step += 1;
    let t = st.step as i32;
    let (b1, b2) = (cfg.beta1, cfg.beta2);
    for i in 0..r.data.len() {
        st.m.data[i] = b1 * st.m.data[i] + (1.0 - b1) * r.data[i];
        st.v.data[i] = b2 * st.v.data[i] + (1.0 - b2) * r.data[i] * r.data[i];
    }
    let (bc1, bc2) = if cfg.correct_bias { (1.0 - b1.powi(t), 1.0 - b2.powi(t)) } else { (1.0, 1.0) };
    let mut n = Mat::zeros(r.rows, r.cols);
    let eta_t = match cfg.eps_mode {
        EpsMode::Hf => {
            for i in 0..n.data.len() {
                n.data[i] = st.m.data[i] / (st.v.data[i].sqrt() + cfg.eps);
            }
            cfg.lr * bc2.sqrt() / bc1
        }
        EpsMode::Torch => {
            for i in 0..n.data.len() {
                n.data[i] = st.m.data[i] / (st.v.data[i].sqrt() / bc2.sqrt() + cfg.eps);
            }
            cfg.lr / bc1
        }
    };
    let u = match basis {
        Some((b, scale)) => project_back(&n, b, scale),
        None => n,
    };
    let decay = cfg.lr * cfg.weight_decay;
    for i in 0..w.data.len() {
        let mut x = w.data[i];
        if cfg.decay == DecayMode::TorchBeforeUpdate {
            x *= 1.0 - decay;
        }
        x -= eta_t * u.data[i];
        if cfg.decay == DecayMode::HfAfterUpdate {
            x -= decay * x;
        }
        w.data[i] = x;
    }
}

/// The SVD-free closed form of a first GaLore-Adam step from zero moments (invariant 7):
/// `W₁ = W₀ − η α back(R ⊘ (|R| + ε/√(1 − β₂)))` (HF ε, bias correction on), then `· (1 − ηλ)` (HF decay).
pub fn first_step_closed_form(w0: &Mat, g: &Mat, basis: &RefBasis, scale: f64, cfg: &AdamConfig) -> Mat {
    let r = project(g, basis);
    let k = cfg.eps / (1.0 - cfg.beta2).sqrt();
    let n = Mat { rows: r.rows, cols: r.cols, data: r.data.iter().map(|x| x / (x.abs() + k)).collect() };
    let u = project_back(&n, basis, scale);
    let mut w = w0.clone();
    for i in 0..w.data.len() {
        w.data[i] = (w.data[i] - cfg.lr * u.data[i]) * (1.0 - cfg.lr * cfg.weight_decay);
    }
    w
}

/// Adafactor's state in the reference: factored (row, column) or full second moment, optional first moment.
#[derive(Clone, Debug, PartialEq)]
pub struct AdafactorMoments {
    /// Row means (matrices) or the full second moment (vectors, as a 1-row matrix).
    pub row: Vec<f64>,
    /// Column means (matrices; empty for vectors).
    pub col: Vec<f64>,
    /// First moment, when `β₁` is set.
    pub m: Option<Mat>,
    /// Steps taken.
    pub step: u64,
}

/// One GaLore-Adafactor step (galore-torch's `adafactor.py` with a fixed learning rate), or plain Adafactor when
/// `basis` is `None`. `factored` selects the matrix form (2-D parameters) or the vector form (1-D ones, passed as
/// a 1-row matrix).
pub fn adafactor_step(
    w: &mut Mat,
    g: &Mat,
    state: &mut Option<AdafactorMoments>,
    basis: Option<(&RefBasis, f64)>,
    factored: bool,
    cfg: &AdafactorConfig,
) {
    let r = match basis {
        Some((b, _)) => project(g, b),
        None => g.clone(),
    };
    let (rows, cols) = (r.rows, r.cols);
    let st = state.get_or_insert_with(|| AdafactorMoments {
        row: vec![0.0; if factored { rows } else { rows * cols }],
        col: vec![0.0; if factored { cols } else { 0 }],
        m: cfg.beta1.map(|_| Mat::zeros(rows, cols)),
        step: 0,
    });
    st.step += 1;
    let beta2t = 1.0 - (st.step as f64).powf(cfg.decay_rate);
    let u: Vec<f64> = r.data.iter().map(|x| x * x + cfg.eps).collect();
    let mut upd = Mat::zeros(rows, cols);
    if factored {
        for i in 0..rows {
            let mean = (0..cols).map(|j| u[i * cols + j]).sum::<f64>() / cols as f64;
            st.row[i] = beta2t * st.row[i] + (1.0 - beta2t) * mean;
        }
        for j in 0..cols {
            let mean = (0..rows).map(|i| u[i * cols + j]).sum::<f64>() / rows as f64;
            st.col[j] = beta2t * st.col[j] + (1.0 - beta2t) * mean;
        }
        let row_mean = st.row.iter().sum::<f64>() / rows as f64;
        for i in 0..rows {
            for j in 0..cols {
                let v = st.row[i] / row_mean * st.col[j];
                upd.data[i * cols + j] = r.data[i * cols + j] / v.sqrt();
            }
        }
    } else {
        for (k, uk) in u.iter().enumerate() {
            st.row[k] = beta2t * st.row[k] + (1.0 - beta2t) * uk;
            upd.data[k] = r.data[k] / st.row[k].sqrt();
        }
    }
    let rms = (upd.data.iter().map(|x| x * x).sum::<f64>() / upd.data.len() as f64).sqrt();
    let clip = (rms / cfg.clip_threshold).max(1.0);
    upd = upd.scaled(cfg.lr / clip);
    if let (Some(m), Some(b1)) = (st.m.as_mut(), cfg.beta1) {
        for k in 0..m.data.len() {
            m.data[k] = b1 * m.data[k] + (1.0 - b1) * upd.data[k];
        }
        upd = m.clone();
    }
    let u = match basis {
        Some((b, scale)) => project_back(&upd, b, scale),
        None => upd,
    };
    let decay = cfg.lr * cfg.weight_decay;
    for k in 0..w.data.len() {
        w.data[k] = w.data[k] * (1.0 - decay) - u.data[k];
    }
}
