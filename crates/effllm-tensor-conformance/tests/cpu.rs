//! The conformance suite on the CPU backend.
effllm_tensor_conformance::conformance_suite!(effllm_tensor::Device::Cpu);
