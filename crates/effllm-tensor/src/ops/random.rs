//! Seeded random tensors from the counter-based generator.

use crate::layout::checked_elem_count;
use crate::rng::CounterRng;
use crate::{DType, Device, Error, Result, Tensor};

impl Tensor {
    /// Uniform values in `[0, 1)` at indices `offset..offset + n` of `rng`'s stream (see [`crate::rng`]).
    /// f16/bf16 are drawn in f32 and rounded.
    pub fn rand_uniform(
        shape: &[usize],
        dtype: DType,
        device: &Device,
        rng: &CounterRng,
        offset: u64,
    ) -> Result<Tensor> {
        device.check_available()?;
        let n = checked_elem_count("rand_uniform", shape)?;
        #[cfg(feature = "cuda")]
        if let Device::Cuda(_) = device {
            if !dtype.is_float() {
                return Err(Error::UnsupportedDType { op: "rand_uniform", dtype, expected: "a float dtype" });
            }
            let kind = if dtype == DType::F64 { 1 } else { 0 };
            return crate::cuda::ops::rng_fill(&crate::cuda::get(*device)?, shape, rng, offset, kind, 0.0, 1.0)?
                .to_dtype(dtype);
        }
        match dtype {
            DType::F64 => {
                let mut v = vec![0f64; n];
                rng.fill_uniform_f64(offset, &mut v);
                Tensor::from_vec(v, shape, device)
            }
            d if d.is_float() => {
                let mut v = vec![0f32; n];
                rng.fill_uniform_f32(offset, &mut v);
                Tensor::from_vec(v, shape, device)?.to_dtype(d)
            }
            d => Err(Error::UnsupportedDType { op: "rand_uniform", dtype: d, expected: "a float dtype" }),
        }
    }

    /// Standard normal values at indices `offset..offset + n` of `rng`'s stream, times `std`, plus `mean`.
    pub fn randn(
        shape: &[usize],
        dtype: DType,
        device: &Device,
        rng: &CounterRng,
        offset: u64,
        mean: f64,
        std: f64,
    ) -> Result<Tensor> {
        device.check_available()?;
        let n = checked_elem_count("randn", shape)?;
        if !dtype.is_float() {
            return Err(Error::UnsupportedDType { op: "randn", dtype, expected: "a float dtype" });
        }
        #[cfg(feature = "cuda")]
        if let Device::Cuda(_) = device {
            return crate::cuda::ops::rng_fill(&crate::cuda::get(*device)?, shape, rng, offset, 2, mean, std)?
                .to_dtype(dtype);
        }
        let mut v = vec![0f64; n];
        rng.fill_normal_f64(offset, &mut v);
        v.iter_mut().for_each(|x| *x = *x * std + mean);
        Tensor::from_vec(v, shape, device)?.to_dtype(dtype)
    }
}
