//! The CUDA path: the packed down kernel and a pruned FFN on device 0 against the CPU. Without the `cuda` feature
//! or a usable GPU every test skips with a notice; `EFFLLM_REQUIRE_CUDA=1` turns that into a failure.
//! Run on a GPU machine: `EFFLLM_REQUIRE_CUDA=1 cargo test -p griffin --features cuda --release --test cuda`.

mod common;

use common::*;
use effllm_model::{Batch, CausalLm, GraphDecoder, LogitRows};
use effllm_tensor::quant::{KernelPath, QMatrix, QuantType};
use effllm_tensor::{Device, Tensor};
use griffin::{Act, GatedFfn, GriffinConfig, GriffinLlama, PackedDown, PrunedStorage, Selection, select_experts};

/// A CUDA graph capture records every launch on the device's stream, from any thread: the tests of this binary run
/// one at a time.
static DEVICE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    DEVICE.lock().unwrap_or_else(|e| e.into_inner())
}

fn cuda() -> Option<Device> {
    if effllm_tensor::cuda::cuda_available() {
        return Some(Device::Cuda(0));
    }
    assert!(
        std::env::var("EFFLLM_REQUIRE_CUDA").as_deref() != Ok("1"),
        "EFFLLM_REQUIRE_CUDA=1 but no usable CUDA device"
    );
    eprintln!("skipped: no CUDA (build with --features cuda on a GPU machine)");
    None
}

#[test]
fn packed_down_kernel_matches_cpu() {
    let _g = lock();
    let Some(dev) = cuda() else { return };
    for ty in [QuantType::Q4_0, QuantType::Q4_1] {
        let (rows, n, t) = (576, 1536, 3);
        let m = QMatrix::quantize(ty, rows, n, &randn(rows * n, 5, 1, 1.0)).unwrap();
        let e: Vec<u32> = (0..n as u32).filter(|j| (j * 7 + 3) % 5 < 3).collect();
        let p = PackedDown::new(&m, &e).unwrap().unwrap();
        let k = e.len();
        let z = randn(t * k, 5, 2, 1.0);
        let mut want = vec![0f32; t * rows];
        p.matmul(&z, t, &mut want, KernelPath::Scalar).unwrap();
        let pd = p.to_device(&dev).unwrap();
        let zt = Tensor::from_vec(z, &[t, k], &dev).unwrap();
        let got = pd.forward(&zt).unwrap().to_device(&Device::Cpu).unwrap().to_vec_f64().unwrap();
        let want: Vec<f64> = want.iter().map(|&v| f64::from(v)).collect();
        assert!(rel_l2(&got, &want) < 1e-5, "{ty}: rel {}", rel_l2(&got, &want));
    }
}

#[test]
fn pruned_ffn_on_cuda_matches_cpu() {
    let _g = lock();
    let Some(dev) = cuda() else { return };
    let ffn = glu(64, 256, 9, Act::Silu, Store::Q(QuantType::Q4_1));
    let scores: Vec<f32> = randn(256, 9, 3, 1.0).iter().map(|v| v * v).collect();
    let e = select_experts(&scores, 128, &Selection::TopK, true).unwrap();
    let cpu = ffn.gather(&e, PrunedStorage::Copy).unwrap();
    let ffn_gpu = griffin::Ffn::glu(
        ffn.gate().unwrap().to_device(&dev).unwrap(),
        ffn.up().to_device(&dev).unwrap(),
        ffn.down_weight().to_device(&dev).unwrap(),
        Act::Silu,
    )
    .unwrap();
    let gpu = ffn_gpu.gather(&e, PrunedStorage::Copy).unwrap();
    assert!(gpu.is_packed());
    let x = tensor(2, 64, 9, 4);
    let want = cpu.forward(&x).unwrap().to_vec_f64().unwrap();
    let got = gpu.forward(&x.to_device(&dev).unwrap()).unwrap().to_device(&Device::Cpu).unwrap().to_vec_f64().unwrap();
    assert!(rel_l2(&got, &want) < 1e-4, "rel {}", rel_l2(&got, &want));
}

/// GRIFFIN decoding through a CUDA graph: the sequence's pruned model (`pruned_llama`) in effllm-model's
/// `GraphDecoder`, loaded with the dense prefill's cache, gives `GriffinLlama::decode`'s logits to f32 round-off.
#[test]
fn graph_decoding_of_the_pruned_model_matches_griffin() {
    let _g = lock();
    let Some(dev) = cuda() else { return };
    for store in [Store::F32, Store::Q(QuantType::Q4_1)] {
        let m = tiny_model(7, store).to_device(&dev).unwrap();
        let prompt = tokens(12, 7, 64);
        let g = GriffinLlama::new(&m, GriffinConfig::with_density(0.5)).unwrap();
        let mut seq = g.new_sequence();
        let mut cache = m.new_cache();
        let mut logits = g.prefill(&mut seq, &Batch::causal(&prompt, 0), &mut cache, &LogitRows::Last).unwrap();
        g.finalize(&mut seq).unwrap();
        let pruned = g.pruned_llama(&seq).unwrap();
        let mut decoder = GraphDecoder::new(&pruned, 64).unwrap();
        decoder.load_cache(&cache).unwrap();
        for i in 0..6 {
            let next = logits.argmax(1, false).unwrap().to_vec::<u32>().unwrap()[0];
            logits =
                g.decode(&mut seq, &Batch::causal(&[next], prompt.len() + i), &mut cache, &LogitRows::Last).unwrap();
            let got: Vec<f64> = decoder.decode(next).unwrap().iter().map(|&v| f64::from(v)).collect();
            let want = logits.to_vec_f64().unwrap();
            assert!(rel_l2(&got, &want) < 1e-5, "{store:?} step {i}: rel {}", rel_l2(&got, &want));
        }
        assert!(decoder.is_captured());
    }
}
