//! Training on CUDA equals training on the CPU: the same initialisation (counter-based, device-independent), the
//! same batches, f32 — step losses within 1e-4 relative and parameters after five AdamW steps within 1e-3 relative
//! L2 (summation orders differ; AdamW's first steps amplify tiny gradient differences only slightly). In bf16
//! mixed precision the GPU learns as the CPU does. Megalodon (f32) trains on CUDA as on the CPU too. Without a usable GPU only the CPU side runs, unless `EFFLLM_REQUIRE_CUDA=1`.

mod common;

use common::rel_l2;
use effllm_data::TokenizedSplit;
use effllm_tensor::Device;
use effllm_train::{Architecture, Precision, TrainConfig, TrainData, Trainer};

const VOCAB: usize = 64;

fn gpu() -> bool {
    match Device::Cuda(0).check_available() {
        Ok(()) => true,
        Err(e) => {
            assert!(std::env::var("EFFLLM_REQUIRE_CUDA").as_deref() != Ok("1"), "EFFLLM_REQUIRE_CUDA=1 but {e}");
            eprintln!("skipped: {e}");
            false
        }
    }
}

fn data() -> TrainData {
    let walk = |s: u32, n: usize| -> Vec<u32> { (0..n as u32).map(|i| (s + 11 * i + i / 7) % VOCAB as u32).collect() };
    let train = TokenizedSplit::from_parts(vec!["a".into(), "b".into()], vec![walk(1, 900), walk(2, 700)]);
    let val = TokenizedSplit::from_parts(vec!["v".into()], vec![walk(3, 300)]);
    TrainData::from_documents(&train, &val, VOCAB, Some(0), 16, "walk").unwrap()
}

fn run(device: &str, precision: Precision, steps: usize) -> (Vec<f64>, Vec<f64>, f64) {
    run_arch(device, precision, steps, Architecture::Llama)
}

fn run_arch(device: &str, precision: Precision, steps: usize, arch: Architecture) -> (Vec<f64>, Vec<f64>, f64) {
    let mut c = TrainConfig::preset("tiny").unwrap();
    if arch == Architecture::Megalodon {
        c.model.architecture = arch;
        (c.model.n_head, c.model.n_head_kv) = (2, 2);
        c.model.megalodon = Some(common::tiny_megalodon_shape());
    }
    c.model.d_model = 32;
    c.model.d_ff = 64;
    c.data.seq_len = 16;
    c.optim.lr = 1e-2;
    c.optim.warmup_steps = 1;
    c.run.device = device.into();
    c.run.precision = precision;
    let mut d = data();
    let mut t = Trainer::new(c, VOCAB).unwrap();
    let losses = (0..steps).map(|_| t.train_step(&mut d).unwrap().loss).collect();
    let params = common::params_f64(&t);
    (losses, params, t.evaluate(&d).unwrap().loss)
}

#[test]
fn cuda_training_matches_the_cpu() {
    let (cpu_losses, cpu_params, _) = run("cpu", Precision::F32, 5);
    if !gpu() {
        return;
    }
    let (gpu_losses, gpu_params, _) = run("cuda:0", Precision::F32, 5);
    for (a, b) in gpu_losses.iter().zip(&cpu_losses) {
        assert!((a - b).abs() < 1e-4 * b, "loss {a} on CUDA vs {b} on the CPU");
    }
    let err = rel_l2(&gpu_params, &cpu_params);
    assert!(err < 1e-3, "parameters after 5 steps: rel L2 {err:e}");
    // bf16 mixed precision: the GPU learns as the CPU does (bf16 GEMM inputs, f32 accumulation on both).
    let (cpu_bf, _, cpu_eval) = run("cpu", Precision::Bf16, 20);
    let (gpu_bf, _, gpu_eval) = run("cuda:0", Precision::Bf16, 20);
    eprintln!("bf16 losses: cpu {cpu_bf:?} -> eval {cpu_eval}; cuda {gpu_bf:?} -> eval {gpu_eval}");
    assert!(gpu_eval < gpu_bf[0] - 0.5, "bf16 on CUDA did not learn: {gpu_bf:?}, validation {gpu_eval}");
    assert!(
        (gpu_eval - cpu_eval).abs() < 0.05 * cpu_eval,
        "bf16 validation {gpu_eval} on CUDA vs {cpu_eval} on the CPU"
    );
}

#[test]
fn cuda_megalodon_training_matches_the_cpu() {
    let (cpu_losses, cpu_params, cpu_eval) = run_arch("cpu", Precision::F32, 5, Architecture::Megalodon);
    assert!(cpu_eval < cpu_losses[0], "Megalodon on the CPU learns: {cpu_losses:?} -> {cpu_eval}");
    if !gpu() {
        return;
    }
    let (gpu_losses, gpu_params, _) = run_arch("cuda:0", Precision::F32, 5, Architecture::Megalodon);
    for (a, b) in gpu_losses.iter().zip(&cpu_losses) {
        assert!((a - b).abs() < 1e-4 * b, "Megalodon loss {a} on CUDA vs {b} on the CPU");
    }
    let err = rel_l2(&gpu_params, &cpu_params);
    assert!(err < 1e-3, "Megalodon parameters after 5 steps: rel L2 {err:e}");
}
