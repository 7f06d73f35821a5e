//! Block structs, their little-endian byte codecs, and the scalar reference (de)quantisers.

use half::f16;

use super::QuantType;
use crate::{Error, Result};

const QK: usize = QuantType::BLOCK_ELEMS;

#[inline(always)]
pub(crate) fn f16_le(b: &[u8], at: usize) -> f16 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// A Q4_0 block: 32 weights `d·(q − 8)` with 4-bit `q` (18 bytes).
///
/// `qs[j] & 0xF` is element `j` and `qs[j] >> 4` is element `j + 16`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BlockQ4_0 {
    /// Scale.
    pub d: f16,
    /// Packed 4-bit quants: low nibbles are elements 0..15, high nibbles elements 16..31.
    pub qs: [u8; 16],
}

/// A Q4_1 block: 32 weights `d·q + m` with 4-bit `q` (20 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BlockQ4_1 {
    /// Scale.
    pub d: f16,
    /// Minimum (offset added to every element).
    pub m: f16,
    /// Packed 4-bit quants: low nibbles are elements 0..15, high nibbles elements 16..31.
    pub qs: [u8; 16],
}

/// A Q8_0 block: 32 weights `d·q` with 8-bit signed `q` (34 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ8_0 {
    /// Scale.
    pub d: f16,
    /// Signed 8-bit quants, element order.
    pub qs: [i8; 32],
}

/// A Q8_1 block (36 bytes): like [`BlockQ8_0`] plus `s = d·Σ qs`. Used only for quantised activations (the
/// partner of Q4_1 weights); it never appears in files.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ8_1 {
    /// Scale.
    pub d: f16,
    /// `d · Σ_j qs[j]`, rounded to f16.
    pub s: f16,
    /// Signed 8-bit quants, element order.
    pub qs: [i8; 32],
}

const _: () = {
    use std::mem::{align_of, size_of};
    assert!(size_of::<BlockQ4_0>() == 18 && align_of::<BlockQ4_0>() == 2);
    assert!(size_of::<BlockQ4_1>() == 20 && align_of::<BlockQ4_1>() == 2);
    assert!(size_of::<BlockQ8_0>() == 34 && align_of::<BlockQ8_0>() == 2);
    assert!(size_of::<BlockQ8_1>() == 36 && align_of::<BlockQ8_1>() == 2);
    assert!(QuantType::Q4_0.block_bytes() == 18);
    assert!(QuantType::Q4_1.block_bytes() == 20);
    assert!(QuantType::Q8_0.block_bytes() == 34);
};

impl Default for BlockQ8_0 {
    fn default() -> Self {
        BlockQ8_0 { d: f16::ZERO, qs: [0; 32] }
    }
}

impl Default for BlockQ8_1 {
    fn default() -> Self {
        BlockQ8_1 { d: f16::ZERO, s: f16::ZERO, qs: [0; 32] }
    }
}

#[inline(always)]
fn inv(d: f32) -> f32 {
    if d != 0.0 { 1.0 / d } else { 0.0 }
}

impl BlockQ4_0 {
    /// Size in bytes.
    pub const BYTES: usize = 18;

    /// Decodes a block from its little-endian bytes (any alignment).
    pub fn from_le_bytes(b: &[u8; 18]) -> Self {
        let mut qs = [0u8; 16];
        qs.copy_from_slice(&b[2..18]);
        BlockQ4_0 { d: f16_le(b, 0), qs }
    }

    /// Encodes the block as little-endian bytes.
    pub fn to_le_bytes(&self) -> [u8; 18] {
        let mut b = [0u8; 18];
        b[0..2].copy_from_slice(&self.d.to_bits().to_le_bytes());
        b[2..18].copy_from_slice(&self.qs);
        b
    }

    /// The 4-bit quant (0..=15) of element `j` (taken modulo 32), before the `− 8` offset.
    pub fn q(&self, j: usize) -> u8 {
        let j = j % 32;
        let b = self.qs[j % 16];
        if j < 16 { b & 0xF } else { b >> 4 }
    }

    /// The 32 weights `d·(q_j − 8)`, in f32, bit-exact with ggml / gguf-py.
    pub fn dequantize(&self) -> [f32; 32] {
        let d = self.d.to_f32();
        let mut out = [0f32; 32];
        for j in 0..16 {
            out[j] = d * ((self.qs[j] & 0xF) as i32 - 8) as f32;
            out[j + 16] = d * ((self.qs[j] >> 4) as i32 - 8) as f32;
        }
        out
    }

    /// ggml's reference quantiser (`quantize_row_q4_0_ref`).
    pub fn quantize(x: &[f32; 32]) -> Self {
        let mut amax = 0f32;
        let mut max = 0f32;
        for &v in x {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -8.0;
        let id = inv(d);
        let mut qs = [0u8; 16];
        for j in 0..16 {
            let q0 = ((x[j] * id + 8.5).trunc() as i32).clamp(0, 15) as u8;
            let q1 = ((x[j + 16] * id + 8.5).trunc() as i32).clamp(0, 15) as u8;
            qs[j] = q0 | (q1 << 4);
        }
        BlockQ4_0 { d: f16::from_f32(d), qs }
    }
}

impl BlockQ4_1 {
    /// Size in bytes.
    pub const BYTES: usize = 20;

    /// Decodes a block from its little-endian bytes (any alignment).
    pub fn from_le_bytes(b: &[u8; 20]) -> Self {
        let mut qs = [0u8; 16];
        qs.copy_from_slice(&b[4..20]);
        BlockQ4_1 { d: f16_le(b, 0), m: f16_le(b, 2), qs }
    }

    /// Encodes the block as little-endian bytes.
    pub fn to_le_bytes(&self) -> [u8; 20] {
        let mut b = [0u8; 20];
        b[0..2].copy_from_slice(&self.d.to_bits().to_le_bytes());
        b[2..4].copy_from_slice(&self.m.to_bits().to_le_bytes());
        b[4..20].copy_from_slice(&self.qs);
        b
    }

    /// The 4-bit quant (0..=15) of element `j` (taken modulo 32).
    pub fn q(&self, j: usize) -> u8 {
        let j = j % 32;
        let b = self.qs[j % 16];
        if j < 16 { b & 0xF } else { b >> 4 }
    }

    /// The 32 weights `d·q_j + m` (f32 multiply, then add: bit-exact with ggml / gguf-py).
    pub fn dequantize(&self) -> [f32; 32] {
        let d = self.d.to_f32();
        let m = self.m.to_f32();
        let mut out = [0f32; 32];
        for j in 0..16 {
            out[j] = d * (self.qs[j] & 0xF) as f32 + m;
            out[j + 16] = d * (self.qs[j] >> 4) as f32 + m;
        }
        out
    }

    /// ggml's reference quantiser (`quantize_row_q4_1_ref`).
    pub fn quantize(x: &[f32; 32]) -> Self {
        let mut min = x[0];
        let mut max = x[0];
        for &v in &x[1..] {
            if v < min {
                min = v;
            }
            if v > max {
                max = v;
            }
        }
        let d = (max - min) / 15.0;
        let id = inv(d);
        let mut qs = [0u8; 16];
        for j in 0..16 {
            let q0 = (((x[j] - min) * id + 0.5).trunc() as i32).clamp(0, 15) as u8;
            let q1 = (((x[j + 16] - min) * id + 0.5).trunc() as i32).clamp(0, 15) as u8;
            qs[j] = q0 | (q1 << 4);
        }
        BlockQ4_1 { d: f16::from_f32(d), m: f16::from_f32(min), qs }
    }
}

/// Q8_0 / Q8_1 shared quantiser: unrounded f32 `d` and the quants.
#[inline]
fn quantize_q8(x: &[f32; 32]) -> (f32, [i8; 32]) {
    let amax = x.iter().fold(0f32, |a, &v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = inv(d);
    let mut qs = [0i8; 32];
    for (q, &v) in qs.iter_mut().zip(x) {
        // `f32::round` rounds half away from zero, like C's `roundf`; `as` saturates (and maps NaN to 0).
        *q = (v * id).round() as i8;
    }
    (d, qs)
}

impl BlockQ8_0 {
    /// Size in bytes.
    pub const BYTES: usize = 34;

    /// Decodes a block from its little-endian bytes (any alignment).
    pub fn from_le_bytes(b: &[u8; 34]) -> Self {
        let mut qs = [0i8; 32];
        for (q, &v) in qs.iter_mut().zip(&b[2..34]) {
            *q = v as i8;
        }
        BlockQ8_0 { d: f16_le(b, 0), qs }
    }

    /// Encodes the block as little-endian bytes.
    pub fn to_le_bytes(&self) -> [u8; 34] {
        let mut b = [0u8; 34];
        b[0..2].copy_from_slice(&self.d.to_bits().to_le_bytes());
        for (o, &q) in b[2..34].iter_mut().zip(&self.qs) {
            *o = q as u8;
        }
        b
    }

    /// The 32 weights `d·q_j` (bit-exact with ggml / gguf-py).
    pub fn dequantize(&self) -> [f32; 32] {
        let d = self.d.to_f32();
        let mut out = [0f32; 32];
        for (o, &q) in out.iter_mut().zip(&self.qs) {
            *o = q as f32 * d;
        }
        out
    }

    /// ggml's reference quantiser (`quantize_row_q8_0_ref`): `d = max|x|/127`, `q = roundf(x/d)`.
    pub fn quantize(x: &[f32; 32]) -> Self {
        let (d, qs) = quantize_q8(x);
        BlockQ8_0 { d: f16::from_f32(d), qs }
    }
}

impl BlockQ8_1 {
    /// Size in bytes.
    pub const BYTES: usize = 36;

    /// Decodes a block from its little-endian bytes (any alignment).
    pub fn from_le_bytes(b: &[u8; 36]) -> Self {
        let mut qs = [0i8; 32];
        for (q, &v) in qs.iter_mut().zip(&b[4..36]) {
            *q = v as i8;
        }
        BlockQ8_1 { d: f16_le(b, 0), s: f16_le(b, 2), qs }
    }

    /// Encodes the block as little-endian bytes.
    pub fn to_le_bytes(&self) -> [u8; 36] {
        let mut b = [0u8; 36];
        b[0..2].copy_from_slice(&self.d.to_bits().to_le_bytes());
        b[2..4].copy_from_slice(&self.s.to_bits().to_le_bytes());
        for (o, &q) in b[4..36].iter_mut().zip(&self.qs) {
            *o = q as u8;
        }
        b
    }

    /// The 32 values `d·q_j`.
    pub fn dequantize(&self) -> [f32; 32] {
        let d = self.d.to_f32();
        let mut out = [0f32; 32];
        for (o, &q) in out.iter_mut().zip(&self.qs) {
            *o = q as f32 * d;
        }
        out
    }

    /// ggml's reference quantiser (`quantize_row_q8_1_ref`): as Q8_0, plus `s = f16(d·Σ q)` with the unrounded `d`.
    pub fn quantize(x: &[f32; 32]) -> Self {
        let (d, qs) = quantize_q8(x);
        let sum: i32 = qs.iter().map(|&q| q as i32).sum();
        BlockQ8_1 { d: f16::from_f32(d), s: f16::from_f32(sum as f32 * d), qs }
    }
}

/// Dequantises one block of `ty` from `b` (exactly `ty.block_bytes()` bytes) into `out`. The f16 scales are
/// widened by `half`'s inlinable software conversion (exact, like every f16 → f32 conversion): its runtime-dispatched
/// F16C call per scale was 7 % of a SmolLM2 prefill on the Xeon slice of the ninth session.
#[inline]
pub(crate) fn dequantize_block(ty: QuantType, b: &[u8], out: &mut [f32; 32]) {
    match ty {
        QuantType::Q4_0 => {
            let d = f16_le(b, 0).to_f32_const();
            let qs = &b[2..18];
            for j in 0..16 {
                out[j] = d * ((qs[j] & 0xF) as i32 - 8) as f32;
                out[j + 16] = d * ((qs[j] >> 4) as i32 - 8) as f32;
            }
        }
        QuantType::Q4_1 => {
            let d = f16_le(b, 0).to_f32_const();
            let m = f16_le(b, 2).to_f32_const();
            let qs = &b[4..20];
            for j in 0..16 {
                out[j] = d * (qs[j] & 0xF) as f32 + m;
                out[j + 16] = d * (qs[j] >> 4) as f32 + m;
            }
        }
        QuantType::Q8_0 => {
            let d = f16_le(b, 0).to_f32_const();
            for (o, &q) in out.iter_mut().zip(&b[2..34]) {
                *o = (q as i8) as f32 * d;
            }
        }
    }
}

/// Dequantises whole blocks without checks (callers validated the lengths).
pub(crate) fn dequantize_unchecked(ty: QuantType, bytes: &[u8], out: &mut [f32]) {
    let bb = ty.block_bytes();
    for (b, o) in bytes.chunks_exact(bb).zip(out.chunks_exact_mut(QK)) {
        if let Some(o) = o.first_chunk_mut::<32>() {
            dequantize_block(ty, b, o);
        }
    }
}

/// Dequantises a run of `ty` blocks (`bytes.len()` a multiple of `ty.block_bytes()`) into `out`, which must hold
/// exactly 32 values per block.
///
/// Scalar and bit-exact with ggml's reference and PyPI `gguf.quants.dequantize` (f32 multiply, then add; no FMA).
///
/// # Errors
/// [`Error::Quant`] when `bytes` is not a whole number of blocks; [`Error::ElementCount`] when `out` has the wrong
/// length.
pub fn dequantize_row(ty: QuantType, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    const OP: &str = "dequantize_row";
    let bb = ty.block_bytes();
    if !bytes.len().is_multiple_of(bb) {
        return Err(Error::Quant {
            op: OP,
            msg: format!("{} bytes are not a whole number of {} blocks of {bb} bytes", bytes.len(), ty.name()),
        });
    }
    let expected = bytes.len() / bb * QK;
    if out.len() != expected {
        return Err(Error::ElementCount { op: OP, shape: vec![expected], expected, got: out.len() });
    }
    dequantize_unchecked(ty, bytes, out);
    Ok(())
}

/// Quantises `x` (a multiple of 32 values) with ggml's reference quantiser for `ty`, writing
/// `x.len() / 32 · ty.block_bytes()` bytes to `out`.
///
/// # Errors
/// [`Error::Quant`] when `x.len()` is not a multiple of 32; [`Error::ElementCount`] when `out` has the wrong
/// length.
pub fn quantize_row(ty: QuantType, x: &[f32], out: &mut [u8]) -> Result<()> {
    const OP: &str = "quantize_row";
    if !x.len().is_multiple_of(QK) {
        return Err(Error::Quant {
            op: OP,
            msg: format!("{} values are not a multiple of the block size 32", x.len()),
        });
    }
    let bb = ty.block_bytes();
    let expected = x.len() / QK * bb;
    if out.len() != expected {
        return Err(Error::ElementCount { op: OP, shape: vec![expected], expected, got: out.len() });
    }
    let (xb, _) = x.as_chunks::<32>();
    for (xb, o) in xb.iter().zip(out.chunks_exact_mut(bb)) {
        match ty {
            QuantType::Q4_0 => o.copy_from_slice(&BlockQ4_0::quantize(xb).to_le_bytes()),
            QuantType::Q4_1 => o.copy_from_slice(&BlockQ4_1::quantize(xb).to_le_bytes()),
            QuantType::Q8_0 => o.copy_from_slice(&BlockQ8_0::quantize(xb).to_le_bytes()),
        }
    }
    Ok(())
}
