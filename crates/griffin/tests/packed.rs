//! `PackedDown`: the packed codes reproduce the dequantized columns bitwise; the AVX2 and scalar kernels agree
//! with the f64 product; results do not depend on the thread count.

mod common;

use common::*;
use effllm_tensor::quant::{KernelPath, QMatrix, QuantType};
use effllm_tensor::{Device, Tensor};
use griffin::PackedDown;
use proptest::prelude::*;

fn experts(n: usize, k: usize, seed: u64, sorted: bool) -> Vec<u32> {
    // A seeded shuffle (Fisher–Yates on Philox uniforms), first k.
    let u = randn(n, seed, 9, 1.0);
    let mut idx: Vec<u32> = (0..n as u32).collect();
    for i in (1..n).rev() {
        let j = ((u[i].abs() * 1e4) as usize) % (i + 1);
        idx.swap(i, j);
    }
    idx.truncate(k);
    if sorted {
        idx.sort_unstable();
    }
    idx
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn packed_matches_dense_columns(rows in 1usize..40, blocks in 1usize..8, kf in 0.02f64..1.0, seed in 0u64..1000,
                                    q41 in any::<bool>(), sorted in any::<bool>(), t in 1usize..3) {
        let ty = if q41 { QuantType::Q4_1 } else { QuantType::Q4_0 };
        let n = 32 * blocks;
        let k = ((n as f64 * kf) as usize).max(1);
        let m = QMatrix::quantize(ty, rows, n, &randn(rows * n, seed, 1, 1.0)).unwrap();
        let e = experts(n, k, seed, sorted);
        let p = PackedDown::new(&m, &e).unwrap().unwrap();
        prop_assert_eq!((p.rows(), p.k()), (rows, k));
        // Exact: the packed values are the dequantized dense columns (Q4_0's d(q − 8) = 0 may be −0 there).
        let w = m.dequantize();
        let cols: Vec<f32> = (0..rows).flat_map(|r| e.iter().map(|&j| w[r * n + j as usize]).collect::<Vec<_>>()).collect();
        let pw = p.dequantize();
        prop_assert_eq!(&pw, &cols);
        // Products: scalar and AVX2 (where available) against f64.
        let z = randn(t * k, seed, 2, 1.0);
        let want: Vec<f64> = (0..t).flat_map(|i| {
            let zr = &z[i * k..(i + 1) * k];
            (0..rows).map(|r| (0..k).map(|c| f64::from(cols[r * k + c]) * f64::from(zr[c])).sum::<f64>()).collect::<Vec<_>>()
        }).collect();
        let tol = 1e-6 * (k as f64).sqrt() * 4.0;
        for path in [KernelPath::Scalar, KernelPath::Auto] {
            let mut y = vec![0f32; t * rows];
            p.matmul(&z, t, &mut y, path).unwrap();
            let y64: Vec<f64> = y.iter().map(|&v| f64::from(v)).collect();
            prop_assert!(rel_l2(&y64, &want) < tol, "{:?}: rel {}", path, rel_l2(&y64, &want));
        }
        // The tensor entry point.
        let zt = Tensor::from_vec(z.clone(), &[t, k], &Device::Cpu).unwrap();
        let yt = p.forward(&zt).unwrap().to_vec_f64().unwrap();
        prop_assert!(rel_l2(&yt, &want) < tol);
    }
}

/// A SmolLM2-sized down projection (576 × 1536, density 0.5) takes the parallel path; the result is bitwise the
/// same on 1 and 2 threads, and the packed bytes are about 62% of the dense Q4_1 bytes.
#[test]
fn parallel_is_thread_independent() {
    let (rows, n, k) = (576, 1536, 768);
    let m = QMatrix::quantize(QuantType::Q4_1, rows, n, &randn(rows * n, 3, 1, 1.0)).unwrap();
    let e = experts(n, k, 3, true);
    let p = PackedDown::new(&m, &e).unwrap().unwrap();
    assert!(p.nbytes() as f64 <= 0.62 * m.nbytes() as f64, "{} vs {}", p.nbytes(), m.nbytes());
    let z = randn(k, 3, 2, 1.0);
    let run = |threads: usize| {
        effllm_tensor::threads::with_num_threads(threads, || {
            let mut y = vec![0f32; rows];
            p.matvec(&z, &mut y, KernelPath::Auto).unwrap();
            y
        })
        .unwrap()
    };
    assert_eq!(run(1), run(2));
}

/// Q8_0 is not packed (the pruned FFN falls back to f32 columns); bad expert lists are errors.
#[test]
fn unsupported_and_bad_input() {
    let m = QMatrix::quantize(QuantType::Q8_0, 4, 64, &randn(256, 1, 1, 1.0)).unwrap();
    assert!(PackedDown::new(&m, &[0, 1]).unwrap().is_none());
    let m = QMatrix::quantize(QuantType::Q4_1, 4, 64, &randn(256, 1, 1, 1.0)).unwrap();
    assert!(PackedDown::new(&m, &[0, 0]).is_err());
    assert!(PackedDown::new(&m, &[64]).is_err());
    let p = PackedDown::new(&m, &[3, 40]).unwrap().unwrap();
    let mut y = vec![0f32; 3];
    assert!(p.matvec(&[1.0, 2.0], &mut y, KernelPath::Auto).is_err());
}
