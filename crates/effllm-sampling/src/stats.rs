//! χ² goodness-of-fit machinery for the statistical tests of this crate and of every speculative decoder built on
//! it (invariant "distributional losslessness" of `specexec.md` §5, `triforce.md` §5, `layerskip.md` §5).
//!
//! The χ² survival function is the regularised upper incomplete gamma function,
//! `sf(x; k) = Q(k/2, x/2)`, evaluated with the series of P for `x < a + 1` and Lentz's continued fraction for Q
//! otherwise (Numerical Recipes §6.2), with ln Γ from the Lanczos approximation (g = 7, 9 terms; relative error
//! below 1e-14). Critical values are found by bisection on `sf`. The unit tests check them against the closed
//! forms `sf(x; 2) = e^{−x/2}` and `sf(x; 1) = erfc(√(x/2))`, and against published table values.

use crate::error::{Result, SamplingError};

const LANCZOS: [f64; 9] = [
    0.999_999_999_999_809_9,
    676.520_368_121_885_1,
    -1_259.139_216_722_402_8,
    771.323_428_777_653_1,
    -176.615_029_162_140_6,
    12.507_343_278_686_905,
    -0.138_571_095_265_720_12,
    9.984_369_578_019_572e-6,
    1.505_632_735_149_311_6e-7,
];

/// ln Γ(x) for x > 0 (Lanczos, g = 7).
pub fn ln_gamma(x: f64) -> f64 {
    if x < 0.5 {
        // Reflection: Γ(x)Γ(1 − x) = π / sin(πx).
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let t = x + 7.5;
    let a = LANCZOS[0] + LANCZOS.iter().enumerate().skip(1).map(|(i, c)| c / (x + i as f64)).sum::<f64>();
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// Regularised upper incomplete gamma Q(a, x) = Γ(a, x) / Γ(a), for a > 0, x ≥ 0.
pub fn gamma_q(a: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    if x == f64::INFINITY {
        return 0.0;
    }
    let log_prefactor = -x + a * x.ln() - ln_gamma(a);
    if x < a + 1.0 {
        // Series for P(a, x).
        let (mut ap, mut del, mut sum) = (a, 1.0 / a, 1.0 / a);
        for _ in 0..10_000 {
            ap += 1.0;
            del *= x / ap;
            sum += del;
            if del.abs() < sum.abs() * 1e-17 {
                break;
            }
        }
        (1.0 - sum * log_prefactor.exp()).max(0.0)
    } else {
        // Continued fraction for Q(a, x) (modified Lentz).
        const TINY: f64 = 1e-300;
        let mut b = x + 1.0 - a;
        let mut c = 1.0 / TINY;
        let mut d = 1.0 / b;
        let mut h = d;
        for i in 1..10_000 {
            let an = -(i as f64) * (i as f64 - a);
            b += 2.0;
            d = an * d + b;
            if d.abs() < TINY {
                d = TINY;
            }
            c = b + an / c;
            if c.abs() < TINY {
                c = TINY;
            }
            d = 1.0 / d;
            let del = d * c;
            h *= del;
            if (del - 1.0).abs() < 1e-16 {
                break;
            }
        }
        (log_prefactor.exp() * h).clamp(0.0, 1.0)
    }
}

/// Survival function of the χ² distribution with `dof` degrees of freedom: P(X ≥ x).
pub fn chi_square_sf(x: f64, dof: usize) -> f64 {
    if dof == 0 {
        return if x > 0.0 { 0.0 } else { 1.0 };
    }
    gamma_q(dof as f64 / 2.0, x / 2.0)
}

/// The critical value c with `chi_square_sf(c, dof) = alpha` (the upper α quantile), by bisection to 1e-12
/// relative. `alpha` must lie in (0, 1) and `dof ≥ 1`; otherwise NaN.
pub fn chi_square_critical(alpha: f64, dof: usize) -> f64 {
    if !(alpha > 0.0 && alpha < 1.0) || dof == 0 {
        return f64::NAN;
    }
    let mut hi = dof as f64 + 10.0 * (2.0 * dof as f64).sqrt() + 50.0;
    while chi_square_sf(hi, dof) > alpha {
        hi *= 2.0;
    }
    let mut lo = 0.0f64;
    for _ in 0..400 {
        let mid = 0.5 * (lo + hi);
        if chi_square_sf(mid, dof) > alpha {
            lo = mid;
        } else {
            hi = mid;
        }
        if hi - lo <= 1e-12 * hi {
            break;
        }
    }
    0.5 * (lo + hi)
}

/// Result of a χ² goodness-of-fit test.
#[derive(Clone, Debug, PartialEq)]
pub struct ChiSquareTest {
    /// Pearson's statistic Σ (O − E)² / E over the (pooled) cells; +∞ if an impossible cell was observed.
    pub statistic: f64,
    /// Degrees of freedom: cells − 1 (no parameters are estimated).
    pub dof: usize,
    /// P(χ²_dof ≥ statistic).
    pub p_value: f64,
    /// Number of cells after pooling.
    pub cells: usize,
    /// Number of observations.
    pub samples: u64,
    /// Observations that fell on cells of probability exactly 0 (any makes the statistic +∞).
    pub impossible: u64,
}

impl ChiSquareTest {
    /// Whether the test rejects the hypothesised distribution at significance `alpha`.
    pub fn rejects(&self, alpha: f64) -> bool {
        self.impossible > 0 || self.p_value < alpha
    }

    /// The critical value at significance `alpha` for this test's degrees of freedom.
    pub fn critical_value(&self, alpha: f64) -> f64 {
        chi_square_critical(alpha, self.dof)
    }
}

/// Pearson's χ² goodness-of-fit test of `observed` counts against `probs` (normalised by their sum).
///
/// Cells whose expected count is below `min_expected` (5 is the usual rule) are pooled into one cell; if the
/// pool is still below `min_expected` it is merged into the smallest remaining cell. Cells of probability 0 are
/// excluded, and any observation on them is counted in [`ChiSquareTest::impossible`] (statistic +∞).
pub fn chi_square_gof(observed: &[u64], probs: &[f64], min_expected: f64) -> Result<ChiSquareTest> {
    if observed.len() != probs.len() {
        return Err(SamplingError::RowCount { what: "chi-square cells", expected: probs.len(), got: observed.len() });
    }
    let mut total_p = 0.0;
    for (index, &p) in probs.iter().enumerate() {
        if !p.is_finite() || p < 0.0 {
            return Err(SamplingError::InvalidProbability { what: "chi-square probs", index, value: p as f32 });
        }
        total_p += p;
    }
    if total_p <= 0.0 {
        return Err(SamplingError::ZeroMass { what: "chi-square probs" });
    }
    let n: u64 = observed.iter().sum();
    let mut impossible = 0u64;
    let mut cells: Vec<(f64, f64)> = Vec::new(); // (observed, expected)
    let mut pool = (0.0f64, 0.0f64);
    for (&o, &p) in observed.iter().zip(probs) {
        if p == 0.0 {
            impossible += o;
            continue;
        }
        let e = n as f64 * p / total_p;
        if e < min_expected {
            pool.0 += o as f64;
            pool.1 += e;
        } else {
            cells.push((o as f64, e));
        }
    }
    if pool.1 > 0.0 {
        if pool.1 >= min_expected || cells.is_empty() {
            cells.push(pool);
        } else if let Some(smallest) =
            cells.iter_mut().min_by(|a, b| a.1.partial_cmp(&b.1).unwrap_or(std::cmp::Ordering::Equal))
        {
            smallest.0 += pool.0;
            smallest.1 += pool.1;
        }
    }
    let dof = cells.len().saturating_sub(1);
    let statistic =
        if impossible > 0 { f64::INFINITY } else { cells.iter().map(|&(o, e)| (o - e) * (o - e) / e).sum::<f64>() };
    let p_value = if impossible > 0 { 0.0 } else { chi_square_sf(statistic, dof) };
    Ok(ChiSquareTest { statistic, dof, p_value, cells: cells.len(), samples: n, impossible })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ln_gamma_known_values() {
        assert!((ln_gamma(1.0)).abs() < 1e-14);
        assert!((ln_gamma(0.5) - std::f64::consts::PI.sqrt().ln()).abs() < 1e-13);
        assert!((ln_gamma(10.0) - 362_880f64.ln()).abs() < 1e-12);
        assert!((ln_gamma(50.5) - 146.519_255_490_720_6).abs() < 1e-9);
    }

    #[test]
    fn sf_closed_forms() {
        for &x in &[0.01, 0.5, 1.0, 3.0, 10.0, 30.0, 80.0] {
            let want = (-x / 2.0f64).exp();
            assert!((chi_square_sf(x, 2) - want).abs() <= 1e-12 * want, "x = {x}");
        }
        // dof 1: erfc(sqrt(x/2)); erfc(1) = 0.157299207050285, so sf(2; 1) = 0.157299207050285.
        assert!((chi_square_sf(2.0, 1) - 0.157_299_207_050_285_1).abs() < 1e-13);
        // dof 4: e^{-x/2}(1 + x/2).
        assert!((chi_square_sf(7.0, 4) - (-3.5f64).exp() * 4.5).abs() < 1e-14);
    }

    #[test]
    fn critical_values_match_tables() {
        // Upper 0.001 quantiles (NIST/SEMATECH e-Handbook, table 1.3.6.7.4, three decimals).
        for &(dof, c) in &[
            (1, 10.828),
            (2, 13.816),
            (3, 16.266),
            (5, 20.515),
            (7, 24.322),
            (10, 29.588),
            (15, 37.697),
            (20, 45.315),
            (30, 59.703),
            (50, 86.661),
            (100, 149.449),
        ] {
            let got = chi_square_critical(1e-3, dof);
            assert!((got - c).abs() < 1.5e-3, "dof {dof}: {got} vs {c}");
        }
        // Closed form for dof 2: c = 2 ln(1/alpha).
        assert!((chi_square_critical(1e-3, 2) - 2.0 * 1000f64.ln()).abs() < 1e-9);
        assert!((chi_square_critical(0.05, 1) - 3.841_458_820_694_124).abs() < 1e-8);
    }

    #[test]
    fn gof_pools_and_flags_impossible() {
        let t = chi_square_gof(&[50, 50, 0], &[0.5, 0.5, 0.0], 5.0).unwrap();
        assert_eq!((t.dof, t.impossible), (1, 0));
        assert!(t.statistic.abs() < 1e-12 && (t.p_value - 1.0).abs() < 1e-12);
        let t = chi_square_gof(&[50, 49, 1], &[0.5, 0.5, 0.0], 5.0).unwrap();
        assert!(t.rejects(1e-3) && t.statistic.is_infinite());
        // Tiny cells are pooled: expected 1 and 1 → pooled 2 < 5 → merged into the smallest regular cell.
        let t = chi_square_gof(&[49, 49, 1, 1], &[0.49, 0.49, 0.01, 0.01], 5.0).unwrap();
        assert_eq!(t.cells, 2);
        assert!(chi_square_gof(&[1, 2], &[1.0], 5.0).is_err());
    }
}
