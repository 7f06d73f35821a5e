//! The body of the `dequantize` fuzz target (`fuzz/fuzz_targets/dequantize.rs`), also run by the test suite.

use super::blocks::f16_le;
use super::{
    ActivationQuant, BlockQ4_0, BlockQ4_1, BlockQ8_0, KernelPath, QMatrix, QuantType, dequantize_row, quantize_row,
};
use crate::Error;

/// Fuzz body: decodes arbitrary bytes as quant blocks and runs every kernel on them, asserting the properties
/// (typed errors for malformed lengths, bit-exact dequantisation against the block structs (any NaN matching any
/// NaN), fused GEMV within the
/// error bound of the f64 reference when the scales are finite, skinny GEMM = GEMVs). Panics only on a property
/// violation.
///
/// Layout of `data`: byte 0 picks the type, byte 1 the row length (1..=4 blocks) and the number of activation
/// vectors, the rest is block bytes.
#[doc(hidden)]
pub fn fuzz_dequantize(data: &[u8]) {
    let [sel_ty, sel, body @ ..] = data else { return };
    let ty = QuantType::ALL[*sel_ty as usize % 3];
    let bb = ty.block_bytes();
    let nblocks = body.len() / bb;

    // 1. Lengths: a partial block is a typed error, never a panic; a wrong output length too.
    let mut out = vec![0f32; nblocks * 32];
    let r = dequantize_row(ty, body, &mut out);
    assert_eq!(r.is_ok(), body.len().is_multiple_of(bb), "{r:?}");
    if !body.len().is_multiple_of(bb) {
        assert!(matches!(r, Err(Error::Quant { .. })), "{r:?}");
    }
    let whole = &body[..nblocks * bb];
    assert!(dequantize_row(ty, whole, &mut out).is_ok());
    let mut short = vec![0f32; out.len() + 1];
    assert!(matches!(dequantize_row(ty, whole, &mut short), Err(Error::ElementCount { .. })));

    // 2. Bit-exact against the block structs, byte round trip, value sets.
    for (b, o) in whole.chunks_exact(bb).zip(out.chunks_exact(32)) {
        let d = f16_le(b, 0).to_f32();
        let (expect, back): ([f32; 32], Vec<u8>) = match ty {
            QuantType::Q4_0 => {
                let blk = BlockQ4_0::from_le_bytes(b.try_into().expect("18 bytes"));
                for (j, v) in o.iter().enumerate() {
                    assert!(same(*v, d * (blk.q(j) as i32 - 8) as f32));
                }
                (blk.dequantize(), blk.to_le_bytes().to_vec())
            }
            QuantType::Q4_1 => {
                let blk = BlockQ4_1::from_le_bytes(b.try_into().expect("20 bytes"));
                let m = blk.m.to_f32();
                for (j, v) in o.iter().enumerate() {
                    assert!(same(*v, d * blk.q(j) as f32 + m));
                }
                (blk.dequantize(), blk.to_le_bytes().to_vec())
            }
            QuantType::Q8_0 => {
                let blk = BlockQ8_0::from_le_bytes(b.try_into().expect("34 bytes"));
                for (v, &q) in o.iter().zip(&blk.qs) {
                    assert!(same(*v, q as f32 * d));
                }
                (blk.dequantize(), blk.to_le_bytes().to_vec())
            }
        };
        assert_eq!(back, b);
        for (e, v) in expect.iter().zip(o) {
            assert!(same(*e, *v));
        }
    }

    // 3. Fused kernels on a matrix of these blocks.
    let cb = 1 + (*sel as usize % 4);
    let n_rows = nblocks / cb;
    if n_rows > 0 {
        let n_cols = cb * 32;
        let w = match QMatrix::from_bytes(ty, n_rows, n_cols, whole[..n_rows * cb * bb].to_vec()) {
            Ok(w) => w,
            Err(e) => panic!("valid matrix rejected: {e}"),
        };
        let mv = 1 + (*sel as usize >> 2) % 8;
        let x: Vec<f32> = (0..mv * n_cols).map(|j| ((j * 7 + *sel as usize) % 13) as f32 / 4.0 - 1.5).collect();
        let exact = super::reference::matmul_t_f64(&w, &x, mv).expect("shapes match");
        let finite = whole
            .chunks_exact(bb)
            .all(|b| f16_le(b, 0).is_finite() && (ty != QuantType::Q4_1 || f16_le(b, 2).is_finite()));
        for path in [KernelPath::Scalar, KernelPath::Auto] {
            let mut ys = vec![0f32; mv * n_rows];
            for (i, xi) in x.chunks_exact(n_cols).enumerate() {
                let y = &mut ys[i * n_rows..(i + 1) * n_rows];
                assert!(w.gemv_with(xi, y, path, ActivationQuant::F32).is_ok());
                if !finite {
                    continue;
                }
                for (r, &yr) in y.iter().enumerate() {
                    let scale = identity_scale(ty, w.row_bytes(r).expect("row in range"), xi);
                    let err = (yr as f64 - exact[i * n_rows + r]).abs();
                    assert!(err <= 1e-4 * scale + 1e-30, "{ty:?} {path:?} row {r}: {yr} vs {}", exact[i * n_rows + r]);
                }
            }
            let mut ym = vec![0f32; mv * n_rows];
            assert!(w.matmul_t_with(&x, mv, &mut ym, path, ActivationQuant::F32).is_ok());
            for (a, b) in ym.iter().zip(&ys) {
                assert!(same(*a, *b), "skinny {a} != gemv {b}");
            }
            let mut yq = vec![0f32; n_rows];
            assert!(w.gemv_with(&x[..n_cols], &mut yq, path, ActivationQuant::Q8).is_ok());
        }
        let mut bad = vec![0f32; n_rows + 1];
        assert!(matches!(w.gemv(&x[..n_cols], &mut bad), Err(Error::ShapeMismatch { .. })));
    }

    // 4. The quantiser on the same bytes read as f32 (NaN, inf, subnormals included): no panic.
    let (floats, _) = body.as_chunks::<4>();
    let n = floats.len() / 32 * 32;
    let xs: Vec<f32> = floats[..n].iter().map(|b| f32::from_le_bytes(*b)).collect();
    let mut q = vec![0u8; n / 32 * bb];
    assert!(quantize_row(ty, &xs, &mut q).is_ok());
    let mut back = vec![0f32; n];
    assert!(dequantize_row(ty, &q, &mut back).is_ok());
}

/// `Σ_j (|d·q_j| + |m|)·|x_j|` over a row: the size of the terms the fused identity adds up (for Q4_1 it exceeds
/// `Σ_j |w_j x_j|` when `d·q_j` and `m` cancel).
fn identity_scale(ty: QuantType, row: &[u8], x: &[f32]) -> f64 {
    let bb = ty.block_bytes();
    let mut s = 0f64;
    for (b, xb) in row.chunks_exact(bb).zip(x.chunks_exact(32)) {
        let d = f16_le(b, 0).to_f64().abs();
        for (j, &xj) in xb.iter().enumerate() {
            let (q, m) = match ty {
                QuantType::Q4_0 => ((nibble(&b[2..18], j) as f64 - 8.0).abs(), 0.0),
                QuantType::Q4_1 => (nibble(&b[4..20], j) as f64, f16_le(b, 2).to_f64().abs()),
                QuantType::Q8_0 => (((b[2 + j] as i8) as f64).abs(), 0.0),
            };
            s += (d * q + m) * (xj as f64).abs();
        }
    }
    s
}

/// Bitwise equality, except that any two NaNs are equal (NaN payloads depend on operand order, which the
/// compiler may change when it vectorises).
fn same(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

fn nibble(qs: &[u8], j: usize) -> u8 {
    if j < 16 { qs[j] & 0xF } else { qs[j - 16] >> 4 }
}
