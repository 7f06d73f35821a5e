//! Projector invariants (spec §5: 1–4, 10, 14) and the basis sources, on random shapes and values.

use effllm_tensor::rng::CounterRng;
use effllm_tensor::{DType, Device, Tensor};
use galore::reference::{self, Mat, RefBasis};
use galore::{
    Basis, BasisSource, ExactSvd, GaLoreError, GaLoreParams, GaLoreProjector, ParamKey, ProjType, RandomizedSvd, Side,
};
use proptest::prelude::*;

fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape, DType::F32, &Device::Cpu, &CounterRng::new(seed, 0), 0, 0.0, 1.0).unwrap()
}

fn mat(t: &Tensor) -> Mat {
    let s = t.shape();
    Mat::from_f32(s[0], s[1], &t.to_vec::<f32>().unwrap())
}

fn ref_basis(b: &Basis) -> RefBasis {
    match b {
        Basis::Left(p) => RefBasis::Left(mat(p)),
        Basis::Right(p) => RefBasis::Right(mat(p)),
        Basis::Both { left, right } => RefBasis::Both(mat(left), mat(right)),
    }
}

fn params(rank: usize, scale: f64, proj_type: ProjType) -> GaLoreParams {
    GaLoreParams { rank, update_proj_gap: 5, scale, proj_type, matrix_shape: None }
}

fn proj_types() -> impl Strategy<Value = ProjType> {
    prop_oneof![
        Just(ProjType::Std),
        Just(ProjType::ReverseStd),
        Just(ProjType::Left),
        Just(ProjType::Right),
        Just(ProjType::Full)
    ]
}

/// A projector refreshed on `g` (at step 0) through `source`.
fn refreshed(p: GaLoreParams, g: &Tensor, source: &mut dyn BasisSource) -> GaLoreProjector {
    let mut proj = GaLoreProjector::new(p, g.shape()).unwrap();
    proj.refresh(g, ParamKey::standalone(), 0, source).unwrap();
    proj
}

/// `XᵀX` or `XXᵀ` (the `r × r` Gram matrix of the basis vectors) minus the identity, max |entry|.
fn gram_defect(x: &Mat, vectors_are_rows: bool) -> f64 {
    let g = if vectors_are_rows { x.matmul(&x.t()) } else { x.t().matmul(x) };
    let eye = Mat::eye(g.rows);
    g.data.iter().zip(&eye.data).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max)
}

fn orthonormality_defect(b: &Basis) -> f64 {
    match ref_basis(b) {
        RefBasis::Left(p) => gram_defect(&p, false),
        RefBasis::Right(p) => gram_defect(&p, true),
        RefBasis::Both(a, bb) => gram_defect(&a, false).max(gram_defect(&bb, true)),
    }
}

/// The best rank-r approximation `U_r S_r V_rᵀ`, from an f64 SVD.
fn best_rank_r(g: &Tensor, r: usize) -> Mat {
    let (u, s, v) = g.to_dtype(DType::F64).unwrap().thin_svd().unwrap();
    let (u, s, v) = (u.to_vec::<f64>().unwrap(), s.to_vec::<f64>().unwrap(), v.to_vec::<f64>().unwrap());
    let (m, n, k) = (g.shape()[0], g.shape()[1], s.len());
    let mut out = Mat::zeros(m, n);
    for i in 0..m {
        for j in 0..n {
            out.data[i * n + j] = (0..r).map(|l| u[i * k + l] * s[l] * v[j * k + l]).sum();
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Invariant 1: `PPᵀ = I` (right), `PᵀP = I` (left), both for `full`; exact and randomized SVD.
    #[test]
    fn bases_are_orthonormal(m in 2usize..14, n in 2usize..14, rank in 1usize..16, ty in proj_types(),
                             randomized in any::<bool>(), seed in any::<u64>()) {
        let g = randn(&[m, n], seed);
        let proj = if randomized {
            refreshed(params(rank, 1.0, ty), &g, &mut RandomizedSvd { seed, ..RandomizedSvd::default() })
        } else {
            refreshed(params(rank, 1.0, ty), &g, &mut ExactSvd)
        };
        prop_assert_eq!(proj.rank(), rank.min(m).min(n));
        prop_assert!(orthonormality_defect(proj.basis().unwrap()) < 1e-5);
    }

    /// Invariant 2: with `α = 1`, `Q = back ∘ project` on a basis from another matrix is idempotent and
    /// non-expansive.
    #[test]
    fn projection_is_an_orthogonal_projector(m in 2usize..12, n in 2usize..12, rank in 1usize..12,
                                             ty in proj_types(), seed in any::<u64>()) {
        let proj = refreshed(params(rank, 1.0, ty), &randn(&[m, n], seed), &mut ExactSvd);
        let g = randn(&[m, n], seed ^ 0x5555);
        let q = proj.project_back(&proj.project_current(&g).unwrap()).unwrap();
        let qq = proj.project_back(&proj.project_current(&q).unwrap()).unwrap();
        prop_assert!(mat(&qq).rel_err(&mat(&q)) < 1e-5);
        prop_assert!(mat(&q).norm() <= mat(&g).norm() * (1.0 + 1e-6));
    }

    /// Invariant 3: at a refresh, `Q(G)` is the best rank-r′ approximation for left, right, std and full, and
    /// `‖R‖² = Σ_{i ≤ r′} s_i²`.
    #[test]
    fn refresh_projection_is_the_best_rank_r_approximation(m in 2usize..12, n in 2usize..12, rank in 1usize..12,
                                                           seed in any::<u64>()) {
        let g = randn(&[m, n], seed);
        let r = rank.min(m).min(n);
        let want = best_rank_r(&g, r);
        let s = g.to_dtype(DType::F64).unwrap().singular_values().unwrap().to_vec::<f64>().unwrap();
        let energy: f64 = s[..r].iter().map(|x| x * x).sum();
        for ty in [ProjType::Std, ProjType::Left, ProjType::Right, ProjType::Full] {
            let proj = refreshed(params(rank, 1.0, ty), &g, &mut ExactSvd);
            let low = proj.project_current(&g).unwrap();
            let q = proj.project_back(&low).unwrap();
            prop_assert!(mat(&q).rel_err(&want) < 1e-4, "{:?}: {}", ty, mat(&q).rel_err(&want));
            let r2 = mat(&low).norm().powi(2);
            prop_assert!((r2 - energy).abs() <= 1e-4 * energy);
        }
    }

    /// Invariant 3, last part: when `r′ ≥ rank(G)`, `Q(G) = G` — for exact and randomized SVD.
    #[test]
    fn low_rank_gradient_is_recovered(m in 3usize..14, n in 3usize..14, k in 1usize..3, extra in 0usize..3,
                                      ty in proj_types(), seed in any::<u64>()) {
        let g = randn(&[m, k], seed).matmul(&randn(&[k, n], seed ^ 1)).unwrap();
        let rank = (k + extra).min(m).min(n);
        for randomized in [false, true] {
            let proj = if randomized {
                refreshed(params(rank, 1.0, ty), &g, &mut RandomizedSvd { seed, ..RandomizedSvd::default() })
            } else {
                refreshed(params(rank, 1.0, ty), &g, &mut ExactSvd)
            };
            let q = proj.project_back(&proj.project_current(&g).unwrap()).unwrap();
            prop_assert!(mat(&q).rel_err(&mat(&g)) < 1e-4, "randomized {}: {}", randomized, mat(&q).rel_err(&mat(&g)));
        }
    }

    /// Invariant 4: with `full`, `R = Aᵀ G Bᵀ` at a refresh is diagonal with the top singular values.
    #[test]
    fn full_projection_is_diagonal_at_refresh(m in 2usize..12, n in 2usize..12, rank in 1usize..12,
                                              seed in any::<u64>()) {
        let g = randn(&[m, n], seed);
        let proj = refreshed(params(rank, 1.0, ProjType::Full), &g, &mut ExactSvd);
        let r = mat(&proj.project_current(&g).unwrap());
        let s = g.singular_values().unwrap().to_vec::<f32>().unwrap();
        for i in 0..r.rows {
            for j in 0..r.cols {
                let want = if i == j { s[i] as f64 } else { 0.0 };
                prop_assert!((r.at(i, j) - want).abs() < 1e-4 * s[0] as f64, "R[{},{}] = {}", i, j, r.at(i, j));
            }
        }
    }

    /// `project` and `α · back` agree with the f64 reference on any basis and scale.
    #[test]
    fn projection_matches_reference(m in 2usize..12, n in 2usize..12, rank in 1usize..12, ty in proj_types(),
                                    scale in 0.1f64..4.0, seed in any::<u64>()) {
        let proj = refreshed(params(rank, scale, ty), &randn(&[m, n], seed), &mut ExactSvd);
        let b = ref_basis(proj.basis().unwrap());
        let g = randn(&[m, n], seed ^ 7);
        let low = proj.project_current(&g).unwrap();
        let want_low = reference::project(&mat(&g), &b);
        prop_assert!(mat(&low).rel_err(&want_low) < 1e-5);
        let n_low = randn(low.shape(), seed ^ 9);
        let back = proj.project_back(&n_low).unwrap();
        prop_assert!(mat(&back).rel_err(&reference::project_back(&mat(&n_low), &b, scale)) < 1e-5);
    }

    /// Invariant 10: shapes of `R` and `P`; the rank is capped at `min(m, n)`.
    #[test]
    fn shapes_follow_the_side(m in 1usize..20, n in 1usize..20, rank in 1usize..25, ty in proj_types()) {
        let proj = GaLoreProjector::new(params(rank, 1.0, ty), &[m, n]).unwrap();
        let r = rank.min(m).min(n);
        prop_assert_eq!(proj.rank(), r);
        let side = proj.side();
        let want = match side { Side::Left => [r, n], Side::Right => [m, r], Side::Both => [r, r] };
        prop_assert_eq!(proj.low_rank_shape(), want);
        if ty == ProjType::Std {
            // std: the moments are max(m, n) × r′ and P holds min(m, n) · r′ entries.
            prop_assert_eq!(want[0] * want[1], m.max(n) * r);
            let g = randn(&[m, n], 3);
            let proj = refreshed(params(rank, 1.0, ty), &g, &mut ExactSvd);
            prop_assert_eq!(proj.basis_bytes(), 4 * m.min(n) * r);
        }
    }
}

/// Invariant 14: `reverse_std` on a wide matrix with `r ≥ m` (square `R`) runs and equals `right`; the reference
/// multiplies on the wrong side there.
#[test]
fn reverse_std_with_square_low_rank_equals_right() {
    let (m, n) = (4, 9);
    let g = randn(&[m, n], 11);
    let rev = refreshed(params(6, 0.5, ProjType::ReverseStd), &g, &mut ExactSvd);
    let right = refreshed(params(6, 0.5, ProjType::Right), &g, &mut ExactSvd);
    assert_eq!(rev.side(), Side::Right);
    assert_eq!(rev.low_rank_shape(), [4, 4]);
    let a = rev.project_back(&rev.project_current(&g).unwrap()).unwrap();
    let b = right.project_back(&right.project_current(&g).unwrap()).unwrap();
    assert_eq!(a.to_vec::<f32>().unwrap(), b.to_vec::<f32>().unwrap());
    assert!(mat(&a).rel_err(&mat(&g).scaled(0.5)) < 1e-5, "rank 4 = min(m, n) recovers G");
}

/// The randomized SVD is a pure function of (seed, parameter index, refresh number), and with a decaying
/// spectrum its subspace captures nearly the optimal energy.
#[test]
fn randomized_svd_is_seeded_and_accurate() {
    let (m, n, r) = (40, 24, 4);
    // G = U diag(2^-i) Vᵀ + small noise: a clear top-r subspace.
    let (u, _) = randn(&[m, n], 1).qr().unwrap();
    let (v, _) = randn(&[n, n], 2).qr().unwrap();
    let s: Vec<f32> = (0..n).map(|i| 0.5f32.powi(i as i32)).collect();
    let s_row = Tensor::from_vec(s, &[1, n], &Device::Cpu).unwrap().broadcast_as(&[m, n]).unwrap();
    let g = u.mul(&s_row).unwrap().matmul(&v.t().unwrap()).unwrap();
    let p = params(r, 1.0, ProjType::Left);
    let key = ParamKey::standalone();
    let run = |seed: u64| {
        let mut proj = GaLoreProjector::new(p, g.shape()).unwrap();
        proj.refresh(&g, key, 0, &mut RandomizedSvd { seed, ..RandomizedSvd::default() }).unwrap();
        proj.project_back(&proj.project_current(&g).unwrap()).unwrap()
    };
    assert_eq!(run(5).to_vec::<f32>().unwrap(), run(5).to_vec::<f32>().unwrap());
    let best = best_rank_r(&g, r);
    let got = mat(&run(5));
    assert!(got.rel_err(&best) < 1e-4, "randomized vs exact: {}", got.rel_err(&best));
}

/// A projector's errors: rank 0, gap 0, non-finite scale, non-matrix shapes, bad bases.
#[test]
fn bad_projector_input_is_a_typed_error() {
    let bad = |p: GaLoreParams, shape: &[usize]| GaLoreProjector::new(p, shape).unwrap_err();
    assert!(matches!(bad(params(0, 1.0, ProjType::Std), &[4, 4]), GaLoreError::InvalidSetting { name: "rank", .. }));
    let p0 = GaLoreParams { update_proj_gap: 0, ..params(2, 1.0, ProjType::Std) };
    assert!(matches!(bad(p0, &[4, 4]), GaLoreError::InvalidSetting { name: "update_proj_gap", .. }));
    assert!(matches!(
        bad(params(2, f64::NAN, ProjType::Std), &[4, 4]),
        GaLoreError::InvalidSetting { name: "scale", .. }
    ));
    assert!(matches!(bad(params(2, 1.0, ProjType::Std), &[8]), GaLoreError::NotAMatrix { .. }));
    assert!(matches!(bad(params(2, 1.0, ProjType::Std), &[2, 3, 4]), GaLoreError::NotAMatrix { .. }));
    let view = GaLoreParams { matrix_shape: Some((5, 5)), ..params(2, 1.0, ProjType::Std) };
    assert!(matches!(bad(view, &[2, 3, 4]), GaLoreError::NotAMatrix { .. }));
    // A declared view works: a 2×3×4 parameter as 6×4.
    let view = GaLoreParams { matrix_shape: Some((6, 4)), ..params(2, 1.0, ProjType::Std) };
    let proj = GaLoreProjector::new(view, &[2, 3, 4]).unwrap();
    assert_eq!(proj.low_rank_shape(), [6, 2]);
    // Bases of the wrong side or shape.
    let mut proj = GaLoreProjector::new(params(2, 1.0, ProjType::Right), &[6, 4]).unwrap();
    assert!(matches!(proj.set_basis(Basis::Left(randn(&[6, 2], 1))), Err(GaLoreError::BadBasis(_))));
    assert!(matches!(proj.set_basis(Basis::Right(randn(&[3, 4], 1))), Err(GaLoreError::BadBasis(_))));
    assert!(matches!(proj.project_current(&randn(&[6, 4], 1)), Err(GaLoreError::BadBasis(_))));
    proj.set_basis(Basis::Right(randn(&[2, 4], 1))).unwrap();
    assert!(proj.project_back(&randn(&[2, 6], 1)).is_err());
}
