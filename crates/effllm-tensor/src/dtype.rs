//! Element types.

use half::{bf16, f16};

use crate::cpu::CpuStorage;

/// The element type of a tensor.
///
/// `F16` and `BF16` are stored as `half` values; CPU kernels compute them in f32 and round once on output. `F64` is
/// the reference dtype. `U32` holds indices (token ids, gather indices, `argmax`/`top_k` results) and `U8` holds
/// boolean masks (non-zero = true).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    /// IEEE binary16.
    F16,
    /// bfloat16 (the upper half of an f32).
    BF16,
    /// IEEE binary32.
    F32,
    /// IEEE binary64.
    F64,
    /// Unsigned bytes; used as booleans by masks.
    U8,
    /// Unsigned 32-bit integers; used for indices.
    U32,
}

impl DType {
    /// Size of one element in bytes.
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F16 | DType::BF16 => 2,
            DType::F32 | DType::U32 => 4,
            DType::F64 => 8,
            DType::U8 => 1,
        }
    }

    /// Whether the dtype is a floating-point type.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F16 | DType::BF16 | DType::F32 | DType::F64)
    }

    /// Short lower-case name (`"f32"`, `"bf16"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::U8 => "u8",
            DType::U32 => "u32",
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
    impl Sealed for u8 {}
    impl Sealed for u32 {}
}

/// A Rust type that can be the element of a [`Tensor`](crate::Tensor).
pub trait WithDType: sealed::Sealed + Copy + Send + Sync + PartialEq + std::fmt::Debug + 'static {
    /// The matching [`DType`].
    const DTYPE: DType;
    /// Converts from f64 (rounding to nearest; integers saturate and truncate toward zero).
    fn from_f64(v: f64) -> Self;
    /// Converts to f64 (exact for every type here).
    fn to_f64(self) -> f64;
    #[doc(hidden)]
    fn into_storage(v: Vec<Self>) -> CpuStorage;
    #[doc(hidden)]
    fn storage_slice(s: &CpuStorage) -> Option<&[Self]>;
    #[doc(hidden)]
    fn storage_slice_mut(s: &mut CpuStorage) -> Option<&mut [Self]>;
}

macro_rules! with_dtype {
    ($t:ty, $variant:ident, $from:expr, $to:expr) => {
        impl WithDType for $t {
            const DTYPE: DType = DType::$variant;
            fn from_f64(v: f64) -> Self {
                $from(v)
            }
            fn to_f64(self) -> f64 {
                $to(self)
            }
            fn into_storage(v: Vec<Self>) -> CpuStorage {
                CpuStorage::$variant(v)
            }
            fn storage_slice(s: &CpuStorage) -> Option<&[Self]> {
                match s {
                    CpuStorage::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn storage_slice_mut(s: &mut CpuStorage) -> Option<&mut [Self]> {
                match s {
                    CpuStorage::$variant(v) => Some(v),
                    _ => None,
                }
            }
        }
    };
}

/// `v` rounded to f32 *to odd*: exact values stay, inexact ones are truncated toward zero with the last mantissa bit
/// set. Rounding that result to nearest-even in a format at least two bits narrower (f16, bf16) gives the correctly
/// rounded value of `v`, where `v as f32` first would round twice.
fn f32_round_to_odd(v: f64) -> f32 {
    let t = v as f32;
    if !t.is_finite() || f64::from(t) == v {
        return t;
    }
    let mut bits = t.to_bits();
    if f64::from(t).abs() > v.abs() {
        bits -= 1; // one step toward zero (sign-magnitude)
    }
    f32::from_bits(bits | 1)
}

/// f64 → f16, correctly rounded to nearest-even (`half::f16::from_f64` may round through f32 twice).
pub(crate) fn f16_from_f64(v: f64) -> f16 {
    f16::from_f32(f32_round_to_odd(v))
}

/// f64 → bf16, correctly rounded to nearest-even. `half::bf16::from_f64` (2.7) drops the low 32 bits of the f64
/// before rounding, so a value just above a halfway point can round down (an f32 value among them: its last
/// three mantissa bits are dropped).
pub(crate) fn bf16_from_f64(v: f64) -> bf16 {
    bf16::from_f32(f32_round_to_odd(v))
}

with_dtype!(f16, F16, f16_from_f64, |v: f16| v.to_f64());
with_dtype!(bf16, BF16, bf16_from_f64, |v: bf16| v.to_f64());
with_dtype!(f32, F32, |v: f64| v as f32, |v: f32| v as f64);
with_dtype!(f64, F64, |v: f64| v, |v: f64| v);
with_dtype!(u8, U8, |v: f64| v as u8, |v: u8| v as f64);
with_dtype!(u32, U32, |v: f64| v as u32, |v: u32| v as f64);

#[cfg(test)]
mod tests {
    use super::*;

    /// Every f32 is exact in f64, so the f64 conversions must agree with `from_f32` (round to nearest-even on the
    /// full f32 mantissa) on it; a deterministic sweep of bit patterns, NaN aside.
    #[test]
    fn f64_to_half_formats_agree_with_the_f32_conversions_on_f32_values() {
        let mut s = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..200_000 {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let x = f32::from_bits(s as u32);
            if x.is_nan() {
                continue;
            }
            assert_eq!(bf16_from_f64(f64::from(x)).to_bits(), bf16::from_f32(x).to_bits(), "bf16 of {x:e}");
            assert_eq!(f16_from_f64(f64::from(x)).to_bits(), f16::from_f32(x).to_bits(), "f16 of {x:e}");
        }
        // Found by a property test: half's `bf16::from_f64` rounded this f32 down.
        let x = -0.360_351_7_f32;
        assert_eq!(bf16_from_f64(f64::from(x)), bf16::from_f32(x));
    }

    /// Values off a bf16 halfway point by far less than an f32 ulp: correctly rounded, where rounding through f32
    /// first would land on the halfway point and go to even.
    #[test]
    fn f64_to_bf16_keeps_bits_below_f32_precision() {
        let lo = bf16::from_f32(1.0).to_f64(); // 1.0, even
        let hi = f64::from(f32::from_bits(0x3F81_0000)); // the next bf16 up, odd
        let mid = (lo + hi) / 2.0;
        assert_eq!(bf16_from_f64(mid).to_f64(), lo, "a tie goes to the even neighbour");
        assert_eq!(bf16_from_f64(mid + mid * 1e-12).to_f64(), hi, "just above the tie rounds up");
        assert_eq!(bf16_from_f64(mid - mid * 1e-12).to_f64(), lo, "just below the tie rounds down");
        assert_eq!(bf16_from_f64(-(mid + mid * 1e-12)).to_f64(), -hi);
        assert_eq!(f16_from_f64(1.0 + 2f64.powi(-11) + 1e-15).to_f64(), 1.0 + 2f64.powi(-10));
        assert!(bf16_from_f64(f64::NAN).is_nan());
        assert_eq!(bf16_from_f64(f64::INFINITY), bf16::INFINITY);
        assert_eq!(bf16_from_f64(1e300), bf16::INFINITY);
        assert_eq!(bf16_from_f64(-1e-300).to_bits(), 0x8000);
    }
}
