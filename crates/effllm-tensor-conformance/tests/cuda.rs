//! The conformance suite on CUDA device 0. Without the `cuda` feature or a usable GPU every test skips with a
//! notice; `EFFLLM_REQUIRE_CUDA=1` turns that into a failure (GPU machines set it).
effllm_tensor_conformance::conformance_suite!(effllm_tensor::Device::Cuda(0));
