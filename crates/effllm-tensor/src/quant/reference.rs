//! Naive f64 reference implementations: the oracle of the tests.
//!
//! Dequantisation to f64 is exact (`d·q + m` of f16 values needs at most 45 significant bits), and the products
//! and sums of the GEMV / matmul are accumulated in f64 in plain index order. Slow by design.

use super::{QMatrix, QuantType};
use crate::{Error, Result};

/// Dequantises whole blocks of `ty` to f64 (exact values of the stored weights).
///
/// # Errors
/// [`Error::Quant`] if `bytes` is not a whole number of blocks.
pub fn dequantize_f64(ty: QuantType, bytes: &[u8]) -> Result<Vec<f64>> {
    let bb = ty.block_bytes();
    if !bytes.len().is_multiple_of(bb) {
        return Err(Error::Quant {
            op: "reference::dequantize_f64",
            msg: format!("{} bytes are not a whole number of {bb}-byte blocks", bytes.len()),
        });
    }
    let f16 = |b: &[u8], at: usize| half::f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f64();
    let mut out = Vec::with_capacity(bytes.len() / bb * QuantType::BLOCK_ELEMS);
    for b in bytes.chunks_exact(bb) {
        match ty {
            QuantType::Q4_0 => {
                let d = f16(b, 0);
                out.extend((0..32).map(|j| d * (nibble(&b[2..18], j) as f64 - 8.0)));
            }
            QuantType::Q4_1 => {
                let (d, m) = (f16(b, 0), f16(b, 2));
                out.extend((0..32).map(|j| d * nibble(&b[4..20], j) as f64 + m));
            }
            QuantType::Q8_0 => {
                let d = f16(b, 0);
                out.extend(b[2..34].iter().map(|&q| d * (q as i8) as f64));
            }
        }
    }
    Ok(out)
}

/// The 4-bit quant of element `j` of a 16-byte `qs` (low nibbles are elements 0..15).
fn nibble(qs: &[u8], j: usize) -> u8 {
    if j < 16 { qs[j] & 0xF } else { qs[j - 16] >> 4 }
}

fn weights(w: &QMatrix) -> Result<Vec<f64>> {
    dequantize_f64(w.quant_type(), w.as_bytes())
}

fn check_x(op: &'static str, w: &QMatrix, x: &[f32], m: usize) -> Result<()> {
    if m.checked_mul(w.n_cols()) != Some(x.len()) {
        return Err(Error::ShapeMismatch { op, lhs: vec![m, w.n_cols()], rhs: vec![x.len()] });
    }
    Ok(())
}

/// `y = W x` in f64.
///
/// # Errors
/// [`Error::ShapeMismatch`] if `x.len() != n_cols`.
pub fn gemv_f64(w: &QMatrix, x: &[f32]) -> Result<Vec<f64>> {
    matmul_t_f64(w, x, 1)
}

/// `Σ_j |w_rj x_j|` per row, in f64: the scale of the rounding error of any f32 evaluation of `W x`.
///
/// # Errors
/// [`Error::ShapeMismatch`] if `x.len() != n_cols`.
pub fn gemv_abs_f64(w: &QMatrix, x: &[f32]) -> Result<Vec<f64>> {
    check_x("reference::gemv_abs_f64", w, x, 1)?;
    let k = w.n_cols();
    let wd = weights(w)?;
    Ok((0..w.n_rows()).map(|r| (0..k).map(|j| (wd[r * k + j] * x[j] as f64).abs()).sum()).collect())
}

/// `Y = X · Wᵀ` in f64 (`X` row-major `m × n_cols`, `Y` row-major `m × n_rows`).
///
/// # Errors
/// [`Error::ShapeMismatch`] if `x.len() != m · n_cols`.
pub fn matmul_t_f64(w: &QMatrix, x: &[f32], m: usize) -> Result<Vec<f64>> {
    check_x("reference::matmul_t_f64", w, x, m)?;
    let (n, k) = (w.n_rows(), w.n_cols());
    let wd = weights(w)?;
    let mut y = vec![0f64; m * n];
    for i in 0..m {
        for r in 0..n {
            y[i * n + r] = (0..k).map(|j| wd[r * k + j] * x[i * k + j] as f64).sum();
        }
    }
    Ok(y)
}

/// `Σ_j a_j b_j` in f64.
pub fn dot_f64(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&a, &b)| a as f64 * b as f64).sum()
}

/// `‖a − b‖₂ / ‖b‖₂` in f64 (0 when both are zero).
pub fn rel_l2(a: &[f32], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(&a, &b)| (a as f64 - b).powi(2)).sum();
    let den: f64 = b.iter().map(|b| b * b).sum();
    if den == 0.0 { num.sqrt() } else { (num / den).sqrt() }
}
