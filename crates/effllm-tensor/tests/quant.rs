//! Tests of `effllm_tensor::quant`: block layouts, bit-exact dequantisation, quantiser error bounds, fused
//! kernels against the f64 reference, determinism, typed errors, the gguf-py golden fixture and the fuzz seeds.

use std::sync::Arc;

use effllm_tensor::quant::QWeight;
use effllm_tensor::quant::reference::{dot_f64, gemv_abs_f64, gemv_f64, matmul_t_f64, rel_l2};
use effllm_tensor::quant::{
    ActivationQuant, BlockQ4_0, BlockQ4_1, BlockQ8_0, BlockQ8_1, KernelPath, QMatrix, QuantType, dequantize_row,
    fuzz_dequantize, quantize_row,
};
use effllm_tensor::{Device, Error, Tensor};
use half::f16;
use proptest::prelude::*;

const PATHS: [KernelPath; 2] = [KernelPath::Scalar, KernelPath::Auto];
const ACTS: [ActivationQuant; 2] = [ActivationQuant::F32, ActivationQuant::Q8];

fn cfg(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

fn cos_vec(n: usize, offset: f64) -> Vec<f32> {
    (0..n).map(|i| (0.1 + 2.0 * (i as f64 + offset).cos()) as f32).collect()
}

/// Deterministic pseudo-random numbers in [-1, 1) (splitmix64).
fn noise(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn ty_strategy() -> impl Strategy<Value = QuantType> {
    prop::sample::select(QuantType::ALL.to_vec())
}

/// A finite, non-zero f16 of magnitude in [lo, hi], random sign.
fn scale(lo: f32, hi: f32) -> impl Strategy<Value = f16> {
    (lo..hi, any::<bool>()).prop_map(|(v, neg)| f16::from_f32(if neg { -v } else { v }))
}

/// Random blocks of `ty` with finite, non-zero d (and finite m), as bytes.
fn blocks(ty: QuantType, n: usize) -> impl Strategy<Value = Vec<u8>> {
    let one = (scale(1e-3, 2.0), scale(1e-3, 2.0), prop::array::uniform32(any::<u8>())).prop_map(move |(d, m, q)| {
        let mut b = Vec::with_capacity(ty.block_bytes());
        b.extend_from_slice(&d.to_bits().to_le_bytes());
        if ty == QuantType::Q4_1 {
            b.extend_from_slice(&m.to_bits().to_le_bytes());
        }
        let nq = if ty == QuantType::Q8_0 { 32 } else { 16 };
        b.extend_from_slice(&q[..nq]);
        b
    });
    prop::collection::vec(one, n).prop_map(|v| v.concat())
}

fn matrix(max_rows: usize, max_blocks: usize) -> impl Strategy<Value = (QMatrix, Vec<f32>)> {
    (ty_strategy(), 1..=max_rows, 1..=max_blocks).prop_flat_map(|(ty, rows, nb)| {
        (blocks(ty, rows * nb), prop::collection::vec(-2.0f32..2.0, nb * 32))
            .prop_map(move |(bytes, x)| (QMatrix::from_bytes(ty, rows, nb * 32, bytes).expect("valid matrix"), x))
    })
}

fn nibble(qs: &[u8], j: usize) -> u8 {
    if j < 16 { qs[j] & 0xF } else { qs[j - 16] >> 4 }
}

/// The section 2.5 formulas, written out independently of the library.
fn formula(ty: QuantType, b: &[u8]) -> [f32; 32] {
    let d = f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
    std::array::from_fn(|j| match ty {
        QuantType::Q4_0 => d * ((nibble(&b[2..18], j) as i32 - 8) as f32),
        QuantType::Q4_1 => {
            let m = f16::from_bits(u16::from_le_bytes([b[2], b[3]])).to_f32();
            d * nibble(&b[4..20], j) as f32 + m
        }
        QuantType::Q8_0 => (b[2 + j] as i8) as f32 * d,
    })
}

// ---------------------------------------------------------------------------------------------------------------
// Layout

#[test]
fn block_sizes_and_alignment() {
    use std::mem::{align_of, size_of};
    assert_eq!((size_of::<BlockQ4_0>(), align_of::<BlockQ4_0>()), (18, 2));
    assert_eq!((size_of::<BlockQ4_1>(), align_of::<BlockQ4_1>()), (20, 2));
    assert_eq!((size_of::<BlockQ8_0>(), align_of::<BlockQ8_0>()), (34, 2));
    assert_eq!((size_of::<BlockQ8_1>(), align_of::<BlockQ8_1>()), (36, 2));
    assert_eq!(QuantType::BLOCK_ELEMS, 32);
    for (ty, bytes, id, name) in
        [(QuantType::Q4_0, 18, 2, "Q4_0"), (QuantType::Q4_1, 20, 3, "Q4_1"), (QuantType::Q8_0, 34, 8, "Q8_0")]
    {
        assert_eq!(ty.block_bytes(), bytes);
        assert_eq!(ty.bytes_per_weight(), bytes as f64 / 32.0);
        assert_eq!(ty.ggml_type_id(), id);
        assert_eq!(QuantType::from_ggml_type_id(id), Some(ty));
        assert_eq!(ty.name(), name);
        assert_eq!(ty.to_string(), name);
    }
    for id in [0, 1, 6, 7, 9, 14, 30, u32::MAX] {
        assert_eq!(QuantType::from_ggml_type_id(id), None);
    }
}

#[test]
fn block_structs_round_trip_bytes() {
    let x = noise(32, 7);
    let xa: &[f32; 32] = x.as_slice().try_into().unwrap();
    let b = BlockQ4_0::quantize(xa);
    assert_eq!(BlockQ4_0::from_le_bytes(&b.to_le_bytes()), b);
    let b = BlockQ4_1::quantize(xa);
    assert_eq!(BlockQ4_1::from_le_bytes(&b.to_le_bytes()), b);
    let b = BlockQ8_0::quantize(xa);
    assert_eq!(BlockQ8_0::from_le_bytes(&b.to_le_bytes()), b);
    let b = BlockQ8_1::quantize(xa);
    assert_eq!(BlockQ8_1::from_le_bytes(&b.to_le_bytes()), b);
    // s = d · Σ q (rounded to f16).
    let sum: i32 = b.qs.iter().map(|&q| q as i32).sum();
    let d = xa.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0;
    assert_eq!(b.s, f16::from_f32(sum as f32 * d));
    for (v, &q) in b.dequantize().iter().zip(&b.qs) {
        assert_eq!(*v, q as f32 * b.d.to_f32());
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Dequantisation: formula, value sets, nibble order

proptest! {
    #![proptest_config(cfg(64))]

    #[test]
    fn dequant_is_bit_exact_formula(ty in ty_strategy(), raw in prop::collection::vec(any::<u8>(), 0..8 * 34)) {
        // Arbitrary bytes (any d, m incl. inf/NaN), cut to whole blocks.
        let bb = ty.block_bytes();
        let bytes = &raw[..raw.len() / bb * bb];
        let mut out = vec![0f32; bytes.len() / bb * 32];
        dequantize_row(ty, bytes, &mut out).unwrap();
        for (b, o) in bytes.chunks_exact(bb).zip(out.chunks_exact(32)) {
            let f = formula(ty, b);
            for j in 0..32 {
                // Bit-exact; NaN payloads (from NaN scales) depend on operand order and are not compared.
                prop_assert!(o[j].to_bits() == f[j].to_bits() || (o[j].is_nan() && f[j].is_nan()),
                    "{:?} element {}: {} vs {}", ty, j, o[j], f[j]);
            }
        }
    }

    #[test]
    fn dequant_value_sets((ty, bytes) in (ty_strategy(), 1usize..6)
        .prop_flat_map(|(t, n)| blocks(t, n).prop_map(move |b| (t, b)))) {
        let bb = ty.block_bytes();
        let mut out = vec![0f32; bytes.len() / bb * 32];
        dequantize_row(ty, &bytes, &mut out).unwrap();
        for (b, o) in bytes.chunks_exact(bb).zip(out.chunks_exact(32)) {
            let d = f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
            let set: Vec<f32> = match ty {
                QuantType::Q4_0 => (-8..=7).map(|v| d * v as f32).collect(),
                QuantType::Q4_1 => {
                    let m = f16::from_bits(u16::from_le_bytes([b[2], b[3]])).to_f32();
                    (0..=15).map(|v| d * v as f32 + m).collect()
                }
                QuantType::Q8_0 => (-128..=127).map(|v| v as f32 * d).collect(),
            };
            for &v in o {
                prop_assert!(set.iter().any(|s| s.to_bits() == v.to_bits()), "{:?}: {} not in the value set", ty, v);
            }
        }
    }

    #[test]
    fn nibble_order(ty in prop::sample::select(vec![QuantType::Q4_0, QuantType::Q4_1]),
                    base in blocks(QuantType::Q4_1, 1), j in 0usize..16, v in 0u8..16, high in any::<bool>()) {
        let mut block = base.clone();
        if ty == QuantType::Q4_0 {
            block.drain(2..4); // drop m: Q4_0 is d + qs
        }
        let qs0 = ty.block_bytes() - 16;
        let before = formula(ty, &block);
        let mut after_b = block.clone();
        let byte = &mut after_b[qs0 + j];
        *byte = if high { (*byte & 0x0F) | (v << 4) } else { (*byte & 0xF0) | v };
        let mut after = [0f32; 32];
        dequantize_row(ty, &after_b, &mut after).unwrap();
        let target = if high { j + 16 } else { j };
        for e in 0..32 {
            if e != target {
                prop_assert_eq!(after[e].to_bits(), before[e].to_bits(), "element {} changed", e);
            }
        }
        let old = nibble(&block[qs0..], target);
        if old != v {
            prop_assert_ne!(after[target], before[target]);
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Quantiser error bounds (llama.cpp test-quantize-fns)

fn total_error(ty: QuantType, x: &[f32]) -> f64 {
    let mut q = vec![0u8; x.len() / 32 * ty.block_bytes()];
    quantize_row(ty, x, &mut q).unwrap();
    let mut back = vec![0f32; x.len()];
    dequantize_row(ty, &q, &mut back).unwrap();
    x.iter().zip(&back).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum::<f64>().sqrt() / x.len() as f64
}

#[test]
fn round_trip_error_bounds() {
    let x = cos_vec(4096, 0.0);
    for (ty, expected) in [(QuantType::Q4_0, 0.00112), (QuantType::Q4_1, 0.00114), (QuantType::Q8_0, 0.000074)] {
        let err = total_error(ty, &x);
        assert!(err < 0.002, "{ty:?}: total error {err}");
        assert!((err - expected).abs() <= 0.1 * expected, "{ty:?}: total error {err}, expected about {expected}");
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Fused kernels

proptest! {
    #![proptest_config(cfg(48))]

    /// Invariant 26: fused GEMV (f32 activations) vs dequantise-then-f64-GEMV, per row, on both kernel paths.
    #[test]
    fn fused_gemv_matches_f64_reference((w, x) in matrix(12, 10)) {
        let exact = gemv_f64(&w, &x).unwrap();
        let scale = gemv_abs_f64(&w, &x).unwrap();
        for path in PATHS {
            let mut y = vec![f32::NAN; w.n_rows()];
            w.gemv_with(&x, &mut y, path, ActivationQuant::F32).unwrap();
            for r in 0..w.n_rows() {
                let err = (y[r] as f64 - exact[r]).abs();
                prop_assert!(err <= 1e-5 * scale[r] + 1e-30,
                    "{:?} {:?} row {}: {} vs {} (scale {})", w.quant_type(), path, r, y[r], exact[r], scale[r]);
            }
        }
    }

    /// Invariant 28: the Q4_1 block identity Σ(d q + m) x = d Σ q x + m Σ x.
    #[test]
    fn q4_1_block_identity(b in blocks(QuantType::Q4_1, 1), x in prop::collection::vec(-3.0f32..3.0, 32)) {
        let d = f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
        let m = f16::from_bits(u16::from_le_bytes([b[2], b[3]])).to_f32();
        let lhs: f64 = (0..32).map(|j| (d as f64 * nibble(&b[4..], j) as f64 + m as f64) * x[j] as f64).sum();
        let tol = 1e-5 * (0..32).map(|j| ((d * nibble(&b[4..], j) as f32 + m) * x[j]).abs() as f64).sum::<f64>();
        // Written out in f32 ...
        let sq: f32 = (0..32).map(|j| nibble(&b[4..], j) as f32 * x[j]).sum();
        let sx: f32 = x.iter().sum();
        let rhs = d * sq + m * sx;
        prop_assert!((rhs as f64 - lhs).abs() <= tol + 1e-30, "{} vs {}", rhs, lhs);
        // ... and through both kernels.
        let w = QMatrix::from_bytes(QuantType::Q4_1, 1, 32, b.clone()).unwrap();
        for path in PATHS {
            let mut y = [0f32];
            w.gemv_with(&x, &mut y, path, ActivationQuant::F32).unwrap();
            prop_assert!((y[0] as f64 - lhs).abs() <= tol + 1e-30, "{:?}: {} vs {}", path, y[0], lhs);
        }
    }

    /// Invariant 10: for m ≤ 8 the skinny kernel equals m GEMVs bitwise (every path, both activation modes).
    #[test]
    fn skinny_gemm_is_bitwise_m_gemvs((w, _x) in matrix(40, 6), m in 1usize..=8, seed in any::<u64>()) {
        let k = w.n_cols();
        let n = w.n_rows();
        let x = noise(m * k, seed);
        for path in PATHS {
            for act in ACTS {
                let mut ym = vec![f32::NAN; m * n];
                w.matmul_t_with(&x, m, &mut ym, path, act).unwrap();
                for i in 0..m {
                    let mut y = vec![f32::NAN; n];
                    w.gemv_with(&x[i * k..(i + 1) * k], &mut y, path, act).unwrap();
                    for r in 0..n {
                        prop_assert_eq!(ym[i * n + r].to_bits(), y[r].to_bits(), "{:?} {:?} m={} i={} r={}", path, act, m, i, r);
                    }
                }
            }
        }
    }
}

#[test]
fn auto_and_scalar_paths_agree_on_large_rows() {
    // Long reductions through the parallel path: both kernels within the f32 bound of the f64 reference.
    for ty in QuantType::ALL {
        let (n, k) = (333, 1536);
        let w = QMatrix::quantize(ty, n, k, &noise(n * k, 1)).unwrap();
        let x = noise(k, 2);
        let exact = gemv_f64(&w, &x).unwrap();
        let scale = gemv_abs_f64(&w, &x).unwrap();
        for path in PATHS {
            let mut y = vec![0f32; n];
            w.gemv_with(&x, &mut y, path, ActivationQuant::F32).unwrap();
            for r in 0..n {
                assert!((y[r] as f64 - exact[r]).abs() <= 1e-5 * scale[r] + 1e-30, "{ty:?} {path:?} row {r}");
            }
        }
    }
}

/// Invariant 27: the Q8-activation path on llama.cpp's test vectors, and against f32 activations.
#[test]
fn q8_activation_error_bounds() {
    let n = 4096;
    let (x0, x1) = (cos_vec(n, 0.0), cos_vec(n, 1.0));
    let exact = dot_f64(&x0, &x1);
    for ty in QuantType::ALL {
        let w = QMatrix::quantize(ty, 1, n, &x0).unwrap();
        for path in PATHS {
            let mut y = [0f32];
            w.gemv_with(&x1, &mut y, path, ActivationQuant::Q8).unwrap();
            let err = (y[0] as f64 - exact).abs() / n as f64;
            assert!(err < 0.02, "{ty:?} {path:?}: dot error {err}");
        }
    }
    // Matrix: Q8 activations vs f32 activations on the same quantized weights, and vs the unquantized f32 matmul.
    let (rows, k) = (96, 576);
    let wf = noise(rows * k, 11);
    let x = noise(k, 12);
    let dense: Vec<f64> = (0..rows).map(|r| dot_f64(&wf[r * k..(r + 1) * k], &x)).collect();
    for ty in QuantType::ALL {
        let w = QMatrix::quantize(ty, rows, k, &wf).unwrap();
        let exact = gemv_f64(&w, &x).unwrap();
        for path in PATHS {
            let mut yq = vec![0f32; rows];
            w.gemv_with(&x, &mut yq, path, ActivationQuant::Q8).unwrap();
            let e = rel_l2(&yq, &exact);
            assert!(e <= 0.02, "{ty:?} {path:?}: Q8 vs f32 activations rel L2 {e}");
            let e = rel_l2(&yq, &dense);
            assert!(e <= 0.2, "{ty:?} {path:?}: vs unquantized weights rel L2 {e}");
        }
        // The two Q8 kernels differ only by f32 summation order.
        let (mut a, mut b) = (vec![0f32; rows], vec![0f32; rows]);
        w.gemv_with(&x, &mut a, KernelPath::Scalar, ActivationQuant::Q8).unwrap();
        w.gemv_with(&x, &mut b, KernelPath::Auto, ActivationQuant::Q8).unwrap();
        let b64: Vec<f64> = b.iter().map(|&v| v as f64).collect();
        assert!(rel_l2(&a, &b64) < 1e-5, "{ty:?}: scalar vs AVX2 Q8 kernels");
    }
}

/// Invariant 9: the parallel row-chunked GEMV is bitwise equal to a sequential row-by-row evaluation, for every
/// thread count.
#[test]
fn parallel_gemv_is_bitwise_deterministic() {
    for ty in QuantType::ALL {
        for (n, k) in [(1usize, 64usize), (7, 96), (333, 576), (1001, 576), (577, 1536)] {
            let w = QMatrix::quantize(ty, n, k, &noise(n * k, n as u64)).unwrap();
            let shared: Arc<dyn AsRef<[u8]> + Send + Sync> = Arc::new(w.as_bytes().to_vec());
            let x = noise(k, 3);
            for path in PATHS {
                for act in ACTS {
                    // Sequential oracle: each row as its own 1-row matrix (zero-copy views of the same bytes).
                    let seq: Vec<f32> = (0..n)
                        .map(|r| {
                            let row = QMatrix::from_shared(ty, 1, k, shared.clone(), r * w.row_bytes(0).unwrap().len())
                                .unwrap();
                            let mut y = [0f32];
                            row.gemv_with(&x, &mut y, path, act).unwrap();
                            y[0]
                        })
                        .collect();
                    for threads in [1, 2, 3] {
                        let y = effllm_tensor::threads::with_num_threads(threads, || {
                            let mut y = vec![f32::NAN; n];
                            w.gemv_with(&x, &mut y, path, act).unwrap();
                            y
                        })
                        .unwrap();
                        for r in 0..n {
                            assert_eq!(y[r].to_bits(), seq[r].to_bits(), "{ty:?} {n}x{k} {path:?} {act:?} t={threads}");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn large_m_matmul_matches_f64_reference() {
    for ty in QuantType::ALL {
        for (m, n, k) in [(9usize, 100usize, 64usize), (17, 300, 576), (64, 257, 160), (33, 1000, 96)] {
            let w = QMatrix::quantize(ty, n, k, &noise(n * k, (m * n) as u64)).unwrap();
            let x = noise(m * k, 5);
            let exact = matmul_t_f64(&w, &x, m).unwrap();
            for threads in [1, 2] {
                let y = effllm_tensor::threads::with_num_threads(threads, || {
                    let mut y = vec![f32::NAN; m * n];
                    w.matmul_t(&x, m, &mut y).unwrap();
                    y
                })
                .unwrap();
                let e = rel_l2(&y, &exact);
                assert!(e < 1e-5 * (k as f64).sqrt(), "{ty:?} m={m} n={n} k={k} t={threads}: rel L2 {e}");
            }
            // Q8 activations with m > 8: fused kernel in groups of 8, still close.
            let mut yq = vec![0f32; m * n];
            w.matmul_t_with(&x, m, &mut yq, KernelPath::Auto, ActivationQuant::Q8).unwrap();
            assert!(rel_l2(&yq, &exact) < 0.02, "{ty:?} Q8 m={m}");
        }
    }
}

#[test]
fn dequantize_rows_and_shared_views() {
    for ty in QuantType::ALL {
        let (n, k) = (5, 96);
        let wf = noise(n * k, 9);
        let w = QMatrix::quantize(ty, n, k, &wf).unwrap();
        assert_eq!(w.nbytes(), n * k / 32 * ty.block_bytes());
        assert_eq!((w.quant_type(), w.n_rows(), w.n_cols()), (ty, n, k));
        let all = w.dequantize();
        let mut part = vec![0f32; 2 * k];
        w.dequantize_rows(2..4, &mut part).unwrap();
        assert_eq!(&all[2 * k..4 * k], &part[..]);
        let mut row = vec![0f32; k];
        dequantize_row(ty, w.row_bytes(3).unwrap(), &mut row).unwrap();
        assert_eq!(&all[3 * k..4 * k], &row[..]);
        // Zero-copy view at an odd (unaligned) offset of a larger buffer.
        let mut buf = vec![0xAAu8; 3];
        buf.extend_from_slice(w.as_bytes());
        buf.extend_from_slice(&[0x55; 7]);
        let v = QMatrix::from_shared(ty, n, k, Arc::new(buf), 3).unwrap();
        assert_eq!(v.as_bytes(), w.as_bytes());
        assert_eq!(v.dequantize(), all);
        let x = noise(k, 4);
        let (mut a, mut b) = (vec![0f32; n], vec![0f32; n]);
        w.gemv(&x, &mut a).unwrap();
        v.gemv(&x, &mut b).unwrap();
        assert_eq!(a, b);
        let c = v.clone();
        assert_eq!(c.as_bytes(), v.as_bytes());
        assert!(format!("{c:?}").contains("QMatrix"));
    }
}

#[test]
fn empty_shapes_do_not_panic() {
    for ty in QuantType::ALL {
        let w = QMatrix::quantize(ty, 0, 64, &[]).unwrap();
        w.gemv(&[0.0; 64], &mut []).unwrap();
        w.matmul_t(&[0.0; 128], 2, &mut []).unwrap();
        let w = QMatrix::quantize(ty, 3, 0, &[]).unwrap();
        let mut y = [1f32; 3];
        w.gemv(&[], &mut y).unwrap();
        assert_eq!(y, [0.0; 3]);
        let mut y = vec![1f32; 27];
        w.matmul_t(&[], 9, &mut y).unwrap();
        assert!(y.iter().all(|&v| v == 0.0));
        let w = QMatrix::quantize(ty, 3, 32, &[0.5; 96]).unwrap();
        w.matmul_t(&[], 0, &mut []).unwrap();
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Typed errors

#[test]
fn malformed_inputs_return_typed_errors() {
    use QuantType::*;
    // Byte length not a whole number of blocks.
    assert!(matches!(dequantize_row(Q4_1, &[0; 21], &mut [0.0; 32]), Err(Error::Quant { .. })));
    assert!(matches!(dequantize_row(Q8_0, &[0; 33], &mut [0.0; 32]), Err(Error::Quant { .. })));
    // Output length.
    assert!(matches!(dequantize_row(Q4_0, &[0; 18], &mut [0.0; 31]), Err(Error::ElementCount { .. })));
    assert!(matches!(dequantize_row(Q4_0, &[0; 36], &mut [0.0; 32]), Err(Error::ElementCount { .. })));
    // quantize_row: x not a multiple of 32, wrong output length.
    assert!(matches!(quantize_row(Q4_0, &[0.0; 33], &mut [0; 18]), Err(Error::Quant { .. })));
    assert!(matches!(quantize_row(Q4_1, &[0.0; 32], &mut [0; 18]), Err(Error::ElementCount { .. })));
    for ty in QuantType::ALL {
        let bb = ty.block_bytes();
        // n_cols not a multiple of 32.
        assert!(matches!(QMatrix::quantize(ty, 2, 48, &[0.0; 96]), Err(Error::Quant { .. })));
        assert!(matches!(QMatrix::from_bytes(ty, 1, 33, vec![0; bb]), Err(Error::Quant { .. })));
        // Data length.
        assert!(matches!(QMatrix::quantize(ty, 2, 32, &[0.0; 63]), Err(Error::ElementCount { .. })));
        assert!(matches!(QMatrix::from_bytes(ty, 2, 32, vec![0; 2 * bb - 1]), Err(Error::Quant { .. })));
        assert!(matches!(QMatrix::from_bytes(ty, 2, 32, vec![0; 2 * bb + 1]), Err(Error::Quant { .. })));
        // Overflowing shapes: checked arithmetic, no huge allocation.
        assert!(matches!(QMatrix::from_bytes(ty, usize::MAX, 64, vec![]), Err(Error::Quant { .. })));
        assert!(matches!(QMatrix::quantize(ty, usize::MAX / 2, 64, &[]), Err(Error::Quant { .. })));
        // Shared buffers: offset past the end, range past the end, offset + size overflowing.
        let buf: Arc<dyn AsRef<[u8]> + Send + Sync> = Arc::new(vec![0u8; 4 * bb]);
        assert!(QMatrix::from_shared(ty, 4, 32, buf.clone(), 0).is_ok());
        assert!(QMatrix::from_shared(ty, 0, 32, buf.clone(), 4 * bb).is_ok());
        assert!(matches!(QMatrix::from_shared(ty, 1, 32, buf.clone(), 4 * bb + 1), Err(Error::Quant { .. })));
        assert!(matches!(QMatrix::from_shared(ty, 4, 32, buf.clone(), 1), Err(Error::Quant { .. })));
        assert!(matches!(QMatrix::from_shared(ty, 1, 32, buf.clone(), usize::MAX), Err(Error::Quant { .. })));
        assert!(matches!(QMatrix::from_shared(ty, 1, 31, buf.clone(), 0), Err(Error::Quant { .. })));

        let w = QMatrix::quantize(ty, 3, 64, &noise(192, 1)).unwrap();
        // x / y length mismatches.
        for act in ACTS {
            let r = w.gemv_with(&[0.0; 63], &mut [0.0; 3], KernelPath::Auto, act);
            assert!(matches!(r, Err(Error::ShapeMismatch { .. })), "{r:?}");
            let r = w.gemv_with(&[0.0; 64], &mut [0.0; 4], KernelPath::Scalar, act);
            assert!(matches!(r, Err(Error::ShapeMismatch { .. })), "{r:?}");
        }
        assert!(matches!(w.matmul_t(&[0.0; 64 * 9 - 1], 9, &mut [0.0; 27]), Err(Error::ShapeMismatch { .. })));
        assert!(matches!(w.matmul_t(&[0.0; 64 * 9], 9, &mut [0.0; 26]), Err(Error::ShapeMismatch { .. })));
        assert!(matches!(w.matmul_t(&[0.0; 128], 2, &mut [0.0; 5]), Err(Error::ShapeMismatch { .. })));
        assert!(matches!(w.matmul_t(&[], usize::MAX, &mut []), Err(Error::ShapeMismatch { .. })));
        // Row access and row ranges.
        assert!(matches!(w.row_bytes(3), Err(Error::IndexOutOfBounds { .. })));
        assert!(matches!(w.dequantize_rows(2..4, &mut [0.0; 128]), Err(Error::IndexOutOfBounds { .. })));
        #[allow(clippy::reversed_empty_ranges)]
        let reversed = 2..1;
        assert!(matches!(w.dequantize_rows(reversed, &mut []), Err(Error::IndexOutOfBounds { .. })));
        assert!(matches!(w.dequantize_rows(0..2, &mut [0.0; 127]), Err(Error::ElementCount { .. })));
    }
    // Errors print the op.
    let e = QMatrix::from_bytes(Q4_1, 1, 32, vec![0; 3]).unwrap_err();
    assert!(e.to_string().contains("QMatrix::from_bytes"), "{e}");
}

// ---------------------------------------------------------------------------------------------------------------
// Golden fixture: PyPI gguf 0.19.0 (scripts/fixtures/quant_gguf.py)

mod json {
    //! Just enough JSON for the fixture index (objects, arrays, strings without escapes, numbers).

    #[derive(Debug, Clone)]
    pub enum Json {
        Num(f64),
        Str(String),
        Arr(Vec<Json>),
        Obj(Vec<(String, Json)>),
    }

    impl Json {
        pub fn get(&self, key: &str) -> &Json {
            match self {
                Json::Obj(kv) => &kv.iter().find(|(k, _)| k == key).unwrap_or_else(|| panic!("no key {key}")).1,
                _ => panic!("not an object"),
            }
        }
        pub fn num(&self) -> f64 {
            match self {
                Json::Num(v) => *v,
                _ => panic!("not a number"),
            }
        }
        pub fn str(&self) -> &str {
            match self {
                Json::Str(s) => s,
                _ => panic!("not a string"),
            }
        }
        pub fn arr(&self) -> &[Json] {
            match self {
                Json::Arr(v) => v,
                _ => panic!("not an array"),
            }
        }
    }

    pub fn parse(s: &str) -> Json {
        let (v, rest) = value(s.trim_start());
        assert!(rest.trim().is_empty(), "trailing JSON");
        v
    }

    fn value(s: &str) -> (Json, &str) {
        let s = s.trim_start();
        match s.as_bytes()[0] {
            b'{' => {
                let mut kv = Vec::new();
                let mut s = s[1..].trim_start();
                if let Some(r) = s.strip_prefix('}') {
                    return (Json::Obj(kv), r);
                }
                loop {
                    let (k, r) = value(s);
                    let r = r.trim_start().strip_prefix(':').expect(":");
                    let (v, r) = value(r);
                    kv.push((k.str().to_string(), v));
                    let r = r.trim_start();
                    if let Some(r) = r.strip_prefix(',') {
                        s = r.trim_start();
                    } else {
                        return (Json::Obj(kv), r.strip_prefix('}').expect("}"));
                    }
                }
            }
            b'[' => {
                let mut v = Vec::new();
                let mut s = s[1..].trim_start();
                if let Some(r) = s.strip_prefix(']') {
                    return (Json::Arr(v), r);
                }
                loop {
                    let (x, r) = value(s);
                    v.push(x);
                    let r = r.trim_start();
                    if let Some(r) = r.strip_prefix(',') {
                        s = r.trim_start();
                    } else {
                        return (Json::Arr(v), r.strip_prefix(']').expect("]"));
                    }
                }
            }
            b'"' => {
                let end = s[1..].find('"').expect("closing quote") + 1;
                (Json::Str(s[1..end].to_string()), &s[end + 1..])
            }
            _ => {
                let end = s.find(|c: char| !(c.is_ascii_digit() || "+-.eE".contains(c))).unwrap_or(s.len());
                (Json::Num(s[..end].parse().expect("number")), &s[end..])
            }
        }
    }
}

fn fixture_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/quant")
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

#[test]
fn golden_gguf_py_fixture() {
    let dir = fixture_dir();
    let index = json::parse(&std::fs::read_to_string(dir.join("index.json")).expect("index.json"));
    assert_eq!(index.get("gguf").str(), "0.19.0");
    let data = std::fs::read(dir.join(index.get("data").str())).expect("fixture data");
    let slice = |span: &json::Json| {
        let (at, len) = (span.arr()[0].num() as usize, span.arr()[1].num() as usize);
        &data[at..at + len]
    };
    let mut cases = 0;
    let mut q4_0_diff_nibbles = 0usize;
    let mut q4_0_nibbles = 0usize;
    for case in index.get("cases").arr() {
        let name = case.get("name").str();
        let (rows, cols) = (case.get("rows").num() as usize, case.get("cols").num() as usize);
        let x = f32s(slice(case.get("input")));
        assert_eq!(x.len(), rows * cols, "{name}");
        for ty in QuantType::ALL {
            let t = case.get("types").get(ty.name());
            let q_py = slice(t.get("quant"));
            let deq_py = f32s(slice(t.get("dequant")));

            // 1. Dequantisation of gguf's bytes: bit-exact, through dequantize_row and QMatrix.
            let mut deq = vec![0f32; rows * cols];
            dequantize_row(ty, q_py, &mut deq).unwrap();
            for (i, (a, b)) in deq.iter().zip(&deq_py).enumerate() {
                assert_eq!(a.to_bits(), b.to_bits(), "{name} {ty:?} element {i}: {a} vs gguf {b}");
            }
            let w = QMatrix::from_bytes(ty, rows, cols, q_py.to_vec()).unwrap();
            assert_eq!(w.dequantize(), deq);

            // 2. Quantisation: byte-exact for Q4_1 and Q8_0; Q4_0 up to one level on ties.
            let w_rs = QMatrix::quantize(ty, rows, cols, &x).unwrap();
            let q_rs = w_rs.as_bytes();
            assert_eq!(q_rs.len(), q_py.len());
            if ty == QuantType::Q4_0 {
                for (b_rs, b_py) in q_rs.chunks_exact(18).zip(q_py.chunks_exact(18)) {
                    assert_eq!(b_rs[..2], b_py[..2], "{name}: Q4_0 scale differs");
                    for j in 0..32 {
                        let (a, b) = (nibble(&b_rs[2..], j) as i32, nibble(&b_py[2..], j) as i32);
                        assert!((a - b).abs() <= 1, "{name}: Q4_0 quant {j} differs by more than one level");
                        q4_0_diff_nibbles += (a != b) as usize;
                        q4_0_nibbles += 1;
                    }
                }
            } else {
                assert_eq!(q_rs, q_py, "{name} {ty:?}: quantised bytes differ from gguf");
            }

            // 3. The recorded error, and the llama.cpp bound for the 4096-long cos vectors.
            let err =
                x.iter().zip(&deq).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum::<f64>().sqrt() / x.len() as f64;
            let err_py = t.get("err").num();
            assert!((err - err_py).abs() <= 1e-9 * err_py.max(1e-30), "{name} {ty:?}: {err} vs {err_py}");
            if name.starts_with("cos_") {
                assert!(err < 0.002, "{name} {ty:?}: {err}");
            }
        }
        cases += 1;
    }
    assert!(cases >= 17, "only {cases} fixture cases");
    // gguf-py 0.19.0 quantises Q4_0 in f32 without FMA, as we do: no tie differences are expected. The bound
    // documents the tolerance should a future gguf-py (or an FMA-contracted ggml build) round ties differently.
    assert!(q4_0_diff_nibbles * 100 <= q4_0_nibbles, "{q4_0_diff_nibbles} of {q4_0_nibbles} Q4_0 quants differ");
    eprintln!("Q4_0 quants differing from gguf-py by one level: {q4_0_diff_nibbles} of {q4_0_nibbles}");
}

// ---------------------------------------------------------------------------------------------------------------
// Fuzz target body: committed seeds and arbitrary bytes

#[test]
fn fuzz_seed_corpus() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus-seeds/dequantize");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_file() {
            fuzz_dequantize(&std::fs::read(&path).unwrap());
            n += 1;
        }
    }
    assert!(n >= 8, "only {n} seeds in {}", dir.display());
}

proptest! {
    #![proptest_config(cfg(64))]

    #[test]
    fn fuzz_body_on_arbitrary_bytes(data in prop::collection::vec(any::<u8>(), 0..700)) {
        fuzz_dequantize(&data);
    }

    #[test]
    fn fuzz_body_on_structured_bytes(ty in 0u8..3, sel in any::<u8>(), (w, _x) in matrix(6, 4)) {
        let mut data = vec![ty, sel];
        data.extend_from_slice(w.as_bytes());
        fuzz_dequantize(&data);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// One pass over several weights sharing an input equals separate `linear_q` calls bit for bit.
    #[test]
    fn linear_q_many_equals_separate_calls(
        ty in prop::sample::select(QuantType::ALL.to_vec()),
        q8 in any::<bool>(),
        m in 1usize..=8,
        kb in 1usize..6,
        ns in prop::collection::vec(1usize..300, 1..4),
        seed in any::<u64>(),
    ) {
        let k = 32 * kb;
        let act = if q8 { effllm_tensor::quant::ActivationQuant::Q8 } else { effllm_tensor::quant::ActivationQuant::F32 };
        let rng = effllm_tensor::rng::CounterRng::new(seed, 3);
        let ws: Vec<QWeight> = ns
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let mut v = vec![0f32; n * k];
                rng.fill_normal_f32((i as u64) << 32, &mut v);
                QWeight::new(QMatrix::quantize(ty, n, k, &v).unwrap()).with_activation_quant(act)
            })
            .collect();
        let mut xv = vec![0f32; m * k];
        rng.fill_normal_f32(1 << 40, &mut xv);
        let x = Tensor::from_vec(xv, &[m, k], &Device::Cpu).unwrap();
        let refs: Vec<&QWeight> = ws.iter().collect();
        let many = x.linear_q_many(&refs).unwrap();
        for (w, y) in ws.iter().zip(&many) {
            let one = x.linear_q(w).unwrap();
            prop_assert_eq!(one.shape(), y.shape());
            let (a, b) = (one.to_vec::<f32>().unwrap(), y.to_vec::<f32>().unwrap());
            prop_assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// The GEMV of a whole matrix (4-row kernels where they exist) equals, bit for bit, one-row matrices taken
    /// one at a time.
    #[test]
    fn gemv_rows_in_groups_equal_single_rows(
        ty in prop::sample::select(QuantType::ALL.to_vec()),
        n in 1usize..70,
        kb in 1usize..8,
        seed in any::<u64>(),
    ) {
        let k = 32 * kb;
        let rng = effllm_tensor::rng::CounterRng::new(seed, 5);
        let mut w = vec![0f32; n * k];
        rng.fill_normal_f32(0, &mut w);
        let mut x = vec![0f32; k];
        rng.fill_normal_f32(1 << 40, &mut x);
        let m = QMatrix::quantize(ty, n, k, &w).unwrap();
        let mut y = vec![0f32; n];
        m.gemv(&x, &mut y).unwrap();
        for (r, &yr_all) in y.iter().enumerate() {
            let one = QMatrix::from_bytes(ty, 1, k, m.row_bytes(r).unwrap().to_vec()).unwrap();
            let mut yr = [0f32; 1];
            one.gemv(&x, &mut yr).unwrap();
            prop_assert_eq!(yr[0].to_bits(), yr_all.to_bits(), "row {}", r);
        }
    }
}

/// A tracked input gets its gradient through `linear_q` and `linear_q_many` (the weight, not differentiable, gets
/// none): `dx = dy · W` with the dequantized W.
#[test]
fn linear_q_records_the_input_gradient() {
    let (n, k) = (5, 64);
    let w = QWeight::new(QMatrix::quantize(QuantType::Q4_1, n, k, &noise(n * k, 3)).unwrap());
    let wd = w.matrix().dequantize();
    let x = Tensor::from_vec(noise(2 * k, 4), &[2, k], &Device::Cpu).unwrap().requires_grad();
    let r = Tensor::from_vec(noise(2 * n, 5), &[2, n], &Device::Cpu).unwrap();
    // Σ r ⊙ (x Wᵀ): dx = r W.
    let want: Vec<f64> = (0..2 * k)
        .map(|i| (0..n).map(|o| r.to_vec::<f32>().unwrap()[(i / k) * n + o] as f64 * wd[o * k + i % k] as f64).sum())
        .collect();
    for many in [false, true] {
        let y = if many { x.linear_q_many(&[&w]).unwrap().remove(0) } else { x.linear_q(&w).unwrap() };
        let grads = y.mul(&r).unwrap().sum_all().unwrap().backward().unwrap();
        let got = grads.get(&x).expect("x has a gradient").to_vec::<f32>().unwrap();
        for (g, e) in got.iter().zip(&want) {
            assert!((*g as f64 - e).abs() <= 1e-4 * (1.0 + e.abs()), "many={many}: {g} vs {e}");
        }
    }
}

/// A weight of zero columns multiplies to zeros of the output shape (a sum over an empty inner dimension), never a
/// division by zero.
#[test]
fn linear_q_over_zero_columns_is_zeros() {
    let w = QWeight::new(QMatrix::quantize(QuantType::Q8_0, 3, 0, &[]).unwrap());
    let x = Tensor::from_vec(Vec::<f32>::new(), &[2, 0], &Device::Cpu).unwrap();
    let y = x.linear_q(&w).unwrap();
    assert_eq!(y.shape(), &[2, 3]);
    assert_eq!(y.to_vec::<f32>().unwrap(), vec![0.0; 6]);
}

/// `QWeight::with_gemv_layout` on the CPU: the layout is recorded; one f32 activation row of a Q4_1 or Q8_0 weight
/// takes the split-scale copy where the AVX-512 kernels run, within f32 summation error of the ggml rows and of the
/// f64 reference; more rows, Q8 activations and Q4_0 give exactly the ggml rows' results.
#[test]
fn cpu_gemv_layout_matches_the_rows() {
    use effllm_tensor::quant::BlockLayout;
    for ty in [QuantType::Q4_1, QuantType::Q8_0, QuantType::Q4_0] {
        let (n, k) = (203, 640);
        let rows = QWeight::new(QMatrix::quantize(ty, n, k, &noise(n * k, 21)).unwrap());
        let gemv = rows.with_gemv_layout().unwrap();
        assert_eq!(gemv.block_layout(), BlockLayout::Gemv);
        assert_eq!(rows.block_layout(), BlockLayout::Rows);
        let wd = rows.matrix().dequantize();
        let x1 = Tensor::from_vec(noise(k, 22), &[1, k], &Device::Cpu).unwrap();
        let (a, b) = (
            x1.linear_q(&rows).unwrap().to_vec::<f32>().unwrap(),
            x1.linear_q(&gemv).unwrap().to_vec::<f32>().unwrap(),
        );
        let xv = x1.to_vec::<f32>().unwrap();
        for r in 0..n {
            let want: f64 = (0..k).map(|c| wd[r * k + c] as f64 * xv[c] as f64).sum();
            let tol = 1e-5 * (1.0 + want.abs());
            assert!((b[r] as f64 - want).abs() <= tol && (a[r] - b[r]).abs() as f64 <= 2.0 * tol, "{ty:?} row {r}");
        }
        let x3 = Tensor::from_vec(noise(3 * k, 23), &[3, k], &Device::Cpu).unwrap();
        assert_eq!(
            x3.linear_q(&rows).unwrap().to_vec::<f32>().unwrap(),
            x3.linear_q(&gemv).unwrap().to_vec::<f32>().unwrap()
        );
        let q8 = (
            rows.clone().with_activation_quant(ActivationQuant::Q8),
            gemv.clone().with_activation_quant(ActivationQuant::Q8),
        );
        assert_eq!(
            x1.linear_q(&q8.0).unwrap().to_vec::<f32>().unwrap(),
            x1.linear_q(&q8.1).unwrap().to_vec::<f32>().unwrap()
        );
        if ty == QuantType::Q4_0 {
            assert_eq!(a, b, "{ty:?}: no split layout, the ggml rows");
        }
    }
}
