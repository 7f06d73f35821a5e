//! Dequantisation and fused kernels on arbitrary block bytes: no panic, no UB, properties of
//! `effllm_tensor::quant::fuzz_dequantize` (the same body runs in `cargo test` over `corpus-seeds/dequantize/`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    effllm_tensor::quant::fuzz_dequantize(data);
});
