//! The GEMV tile layout: a device layout of the ggml blocks for single-row GEMVs on CUDA
//! ([`QWeight::with_gemv_layout`](super::QWeight::with_gemv_layout)).
//!
//! Rows are grouped in tiles of [`TILE_ROWS`] (16), and a warp's 32 lanes take two lanes per row: at step `s` of a
//! tile, lane `2r + j` holds block `2s + j` of the tile's row `r`. Each step is one chunk of those 32 blocks:
//! - their quant bytes in lane order, 16 bytes a block (Q8_0: the first 16 bytes of all 32 blocks, then the last 16);
//! - then their headers in lane order: `d` (f16) for Q4_0 and Q8_0, `d, m` for Q4_1.
//!
//! A chunk is 576 (Q4_0), 640 (Q4_1) or 1,088 bytes (Q8_0), a multiple of 16; tile `t` holds steps
//! `t·steps .. (t+1)·steps` with `steps = ⌈blocks per row / 2⌉`. Rows past `n` and the odd last block of a row are
//! zero blocks. The bytes of every block are the ggml bytes unchanged, only placed elsewhere, so the layout holds the
//! same matrix exactly; every warp load reads one contiguous span (512 bytes of quants, 64-128 of headers).
//!
//! # The kernels' arithmetic
//!
//! Row `r` of the product is `y_r = Σ_b d_b·(Σ_j q_bj·x_bj − c·S_b) + m_b·S_b` with `S_b = Σ_j x_bj` (Q4_1: `c = 0`,
//! `m_b` from the block; Q4_0: `c = 8`, Q8_0: `c = 128` on offset-binary quants `q + 128`, `m_b = 0`). A quant `q`
//! masked in place at bit `p` of its 32-bit word is, read as an f32, exactly the subnormal `q·2^(p−149)`
//! (`p ≤ 20`; the nibbles or bytes at bits 24 and up are shifted down by 8 first). With `e` the binary exponent of
//! `max|x|`, each activation is stored pre-scaled as `x·2^(100−e−p)`, so one mask and one FMA per weight give
//! `q·x·2^(−49−e)`; the sum terms are kept at the same scale, and the row's result is scaled back by `2^(49+e)`.
//! Every factor is a power of two, so the scaling itself is exact at any activation scale (tested from 1e-40 to
//! 1e36); the products and sums round as f32 arithmetic does.

use super::{QMatrix, QuantType};

/// Rows per tile.
pub const TILE_ROWS: usize = 16;

/// Bytes of one step (32 blocks) of the tile layout for `ty`.
pub(crate) const fn chunk_bytes(ty: QuantType) -> usize {
    match ty {
        QuantType::Q4_0 => 576,
        QuantType::Q4_1 => 640,
        QuantType::Q8_0 => 1088,
    }
}

/// Bytes of the tile layout of an `n × k` matrix of `ty`.
pub(crate) fn tiled_len(ty: QuantType, n: usize, k: usize) -> usize {
    n.div_ceil(TILE_ROWS) * (k / 32).div_ceil(2) * chunk_bytes(ty)
}

/// Where block `b` of row `r` lives in the tile layout: (chunk offset, lane).
fn locate(ty: QuantType, k: usize, r: usize, b: usize) -> (usize, usize) {
    let steps = (k / 32).div_ceil(2);
    ((r / TILE_ROWS * steps + b / 2) * chunk_bytes(ty), 2 * (r % TILE_ROWS) + b % 2)
}

/// (offset in the block, offset in the chunk, length) of each piece of a block held by `lane` (a zero length pads the
/// two-piece formats).
fn pieces(ty: QuantType, lane: usize) -> [(usize, usize, usize); 3] {
    match ty {
        QuantType::Q4_0 => [(2, 16 * lane, 16), (0, 512 + 2 * lane, 2), (0, 0, 0)],
        QuantType::Q4_1 => [(4, 16 * lane, 16), (0, 512 + 4 * lane, 4), (0, 0, 0)],
        QuantType::Q8_0 => [(2, 16 * lane, 16), (18, 512 + 16 * lane, 16), (0, 1024 + 2 * lane, 2)],
    }
}

/// The tile layout of `m`'s blocks.
pub(crate) fn gemv_tiles(m: &QMatrix) -> Vec<u8> {
    let (ty, n, k) = (m.quant_type(), m.n_rows(), m.n_cols());
    let (nb, bsz) = (k / 32, ty.block_bytes());
    let bytes = m.as_bytes();
    let mut out = vec![0u8; tiled_len(ty, n, k)];
    for r in 0..n {
        for b in 0..nb {
            let block = &bytes[(r * nb + b) * bsz..][..bsz];
            let (chunk, lane) = locate(ty, k, r, b);
            for (from, to, len) in pieces(ty, lane) {
                out[chunk + to..][..len].copy_from_slice(&block[from..from + len]);
            }
        }
    }
    out
}

/// The ggml row-major blocks of an `n × k` matrix of `ty` from its tile layout (the inverse of [`gemv_tiles`]).
#[cfg(test)]
pub(crate) fn untile(ty: QuantType, n: usize, k: usize, tiled: &[u8]) -> Vec<u8> {
    let (nb, bsz) = (k / 32, ty.block_bytes());
    let mut out = vec![0u8; n * nb * bsz];
    for r in 0..n {
        for b in 0..nb {
            let (chunk, lane) = locate(ty, k, r, b);
            for (from, to, len) in pieces(ty, lane) {
                out[(r * nb + b) * bsz + from..][..len].copy_from_slice(&tiled[chunk + to..][..len]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// The layout holds every block's bytes exactly once: untiling gives the ggml bytes back, and every byte
        /// outside the blocks (padding rows and blocks) is zero.
        #[test]
        fn tiles_round_trip(ty_i in 0usize..3, n in 1usize..40, nb in 1usize..7, seed in 0u64..1000) {
            let ty = [QuantType::Q4_0, QuantType::Q4_1, QuantType::Q8_0][ty_i];
            let k = nb * 32;
            let w: Vec<f32> = (0..n * k)
                .map(|i| (((i as u64 * 2654435761 + seed * 97) % 2001) as f32 - 1000.0) / 300.0)
                .collect();
            let m = QMatrix::quantize(ty, n, k, &w).unwrap();
            let tiled = gemv_tiles(&m);
            prop_assert_eq!(tiled.len(), tiled_len(ty, n, k));
            prop_assert_eq!(tiled.len() % 16, 0);
            prop_assert_eq!(untile(ty, n, k, &tiled), m.as_bytes().to_vec());
            // With the round trip exact, equal byte sums leave nothing but zeros in the padding.
            let sum = |b: &[u8]| b.iter().map(|&v| v as u64).sum::<u64>();
            prop_assert_eq!(sum(&tiled), sum(m.as_bytes()));
        }
    }
}
