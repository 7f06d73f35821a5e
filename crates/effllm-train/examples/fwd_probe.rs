use effllm_model::{Batch, CausalLm, LayeredLm, NoHooks};
use effllm_tensor::{DType, Tensor};
use effllm_train::{TrainConfig, Trainer};
use std::time::Instant;
fn main() {
    let cfg = TrainConfig::preset("cpu-small").unwrap();
    let vocab = 49152;
    let t = Trainer::new(cfg.clone(), vocab).unwrap();
    let m = t.model().unwrap();
    let n = cfg.data.seq_len * cfg.data.batch_size;
    let toks: Vec<u32> = (0..n as u64).map(|i| ((i * 2654435761) % vocab as u64) as u32).collect();
    let batch = Batch::sequences(&toks, cfg.data.seq_len).unwrap();
    for _ in 0..3 {
        let t0 = Instant::now();
        let h = m.embed(&toks).unwrap();
        let a = t0.elapsed().as_secs_f64();
        let h = m.run_layers(h, 0..4, &batch, &mut m.new_cache(), &mut NoHooks).unwrap();
        let b = t0.elapsed().as_secs_f64();
        let hn = m.final_norm(&h).unwrap();
        let logits = m.lm_head(&hn).unwrap();
        let c = t0.elapsed().as_secs_f64();
        let tt = Tensor::from_slice(&toks, &[n], &effllm_tensor::Device::Cpu).unwrap();
        let loss = logits.to_dtype(DType::F32).unwrap().cross_entropy(&tt).unwrap();
        let d = t0.elapsed().as_secs_f64();
        let g = loss.backward().unwrap();
        let e = t0.elapsed().as_secs_f64();
        // plain GEMM of the same size as the head, untracked
        let w = m.lm_head_weight().to_dense_f32().unwrap().detach();
        let t1 = Instant::now();
        let _y = hn.detach().matmul(&w.t().unwrap()).unwrap();
        let f = t1.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let _y = hn.detach().linear(&w).unwrap();
        let f2 = t1.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let ld = logits.detach().requires_grad();
        let l3 = ld.cross_entropy(&tt).unwrap();
        let ce_leaf = t1.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let l2 = logits.detach().cross_entropy(&tt).unwrap();
        let ce_detached = t1.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let _ = l3.backward().unwrap();
        let ce_leaf_bwd = t1.elapsed().as_secs_f64();
        println!("ce detached {ce_detached:.3} leaf {ce_leaf:.3} leaf bwd {ce_leaf_bwd:.3} {:?}", l2.shape());
        println!(
            "embed {a:.3} layers {:.3} head {:.3} ce {:.3} backward {:.3} | untracked head matmul {f:.3} linear {f2:.3} ({} grads)",
            b - a,
            c - b,
            d - c,
            e - d,
            g.len()
        );
    }
}
