//! Shared helpers: a random tiny Llama written as an in-memory GGUF.

#![allow(dead_code)]

use effllm_gguf::{GgmlType, GgufFile, GgufWriter, ReadOptions};
use effllm_model::Device;
use effllm_tensor::quant::{QMatrix, QuantType};
use effllm_tensor::rng::CounterRng;

/// Shape of a tiny model. `d_model` and `d_ff` are multiples of 32 so every weight can be block-quantized.
#[derive(Clone, Copy, Debug)]
pub struct Tiny {
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub d_ff: usize,
    pub vocab: usize,
    pub context: usize,
    /// Storage type of the 2-D weights: F32, Q4_1 or Q8_0.
    pub weights: GgmlType,
    pub tied: bool,
}

impl Tiny {
    pub fn d_model(&self) -> usize {
        self.n_head * self.head_dim
    }

    pub fn default_f32() -> Tiny {
        Tiny {
            n_layer: 2,
            n_head: 4,
            n_head_kv: 2,
            head_dim: 8,
            d_ff: 64,
            vocab: 48,
            context: 256,
            weights: GgmlType::F32,
            tied: true,
        }
    }
}

fn randn(n: usize, seed: u64, stream: u64, scale: f32) -> Vec<f32> {
    let rng = CounterRng::new(seed, stream);
    let mut v = vec![0f32; n];
    rng.fill_normal_f32(0, &mut v);
    v.iter_mut().for_each(|x| *x *= scale);
    v
}

fn weight_bytes(ty: GgmlType, rows: usize, cols: usize, data: &[f32]) -> Vec<u8> {
    match ty {
        GgmlType::F32 => data.iter().flat_map(|x| x.to_le_bytes()).collect(),
        GgmlType::Q4_1 => QMatrix::quantize(QuantType::Q4_1, rows, cols, data).unwrap().as_bytes().to_vec(),
        GgmlType::Q8_0 => QMatrix::quantize(QuantType::Q8_0, rows, cols, data).unwrap().as_bytes().to_vec(),
        other => panic!("tiny models store F32, Q4_1 or Q8_0, not {other:?}"),
    }
}

/// Edits for bad-input tests.
#[derive(Clone, Debug, Default)]
pub struct Edit {
    /// `general.architecture` instead of `llama`.
    pub arch: Option<&'static str>,
    /// A tensor to leave out.
    pub skip: Option<&'static str>,
    /// A tensor whose GGUF dims get an extra 32 columns.
    pub widen: Option<&'static str>,
}

/// The GGUF bytes of a random tiny model with `edit` applied; `tweak` may add entries before it serialises.
pub fn tiny_gguf_with(t: &Tiny, seed: u64, edit: &Edit, tweak: impl FnOnce(&mut GgufWriter<'static>)) -> Vec<u8> {
    let d = t.d_model();
    let mut w = GgufWriter::new();
    w.add("general.architecture", edit.arch.unwrap_or("llama"))
        .add("llama.block_count", t.n_layer as u32)
        .add("llama.embedding_length", d as u32)
        .add("llama.feed_forward_length", t.d_ff as u32)
        .add("llama.attention.head_count", t.n_head as u32)
        .add("llama.attention.head_count_kv", t.n_head_kv as u32)
        .add("llama.context_length", t.context as u32)
        .add("llama.rope.dimension_count", t.head_dim as u32)
        .add("llama.rope.freq_base", 10_000f32)
        .add("llama.attention.layer_norm_rms_epsilon", 1e-5f32)
        .add("llama.vocab_size", t.vocab as u32);
    let mut stream = 0u64;
    let mut mat = |w: &mut GgufWriter<'static>, name: String, rows: usize, cols: usize, ty: GgmlType| {
        stream += 1;
        if edit.skip == Some(name.as_str()) {
            return;
        }
        let cols = if edit.widen == Some(name.as_str()) { cols + 32 } else { cols };
        let data = randn(rows * cols, seed, stream, 1.0 / (cols as f32).sqrt());
        w.add_tensor(name, ty, &[cols as u64, rows as u64], weight_bytes(ty, rows, cols, &data));
    };
    let emb_ty = if t.weights == GgmlType::F32 { GgmlType::F32 } else { GgmlType::Q8_0 };
    mat(&mut w, "token_embd.weight".into(), t.vocab, d, emb_ty);
    if !t.tied {
        mat(&mut w, "output.weight".into(), t.vocab, d, t.weights);
    }
    let hd = t.head_dim;
    for i in 0..t.n_layer {
        mat(&mut w, format!("blk.{i}.attn_q.weight"), t.n_head * hd, d, t.weights);
        mat(&mut w, format!("blk.{i}.attn_k.weight"), t.n_head_kv * hd, d, t.weights);
        mat(&mut w, format!("blk.{i}.attn_v.weight"), t.n_head_kv * hd, d, t.weights);
        mat(&mut w, format!("blk.{i}.attn_output.weight"), d, t.n_head * hd, t.weights);
        mat(&mut w, format!("blk.{i}.ffn_gate.weight"), t.d_ff, d, t.weights);
        mat(&mut w, format!("blk.{i}.ffn_up.weight"), t.d_ff, d, t.weights);
        mat(&mut w, format!("blk.{i}.ffn_down.weight"), d, t.d_ff, t.weights);
        for norm in ["attn_norm", "ffn_norm"] {
            let g: Vec<f32> = randn(d, seed ^ 0x5eed, (i * 2 + usize::from(norm == "ffn_norm")) as u64, 0.2)
                .iter()
                .map(|x| 1.0 + x)
                .collect();
            w.add_tensor(
                format!("blk.{i}.{norm}.weight"),
                GgmlType::F32,
                &[d as u64],
                weight_bytes(GgmlType::F32, 1, d, &g),
            );
        }
    }
    let g: Vec<f32> = randn(d, seed ^ 0x0f, 0, 0.2).iter().map(|x| 1.0 + x).collect();
    w.add_tensor("output_norm.weight", GgmlType::F32, &[d as u64], weight_bytes(GgmlType::F32, 1, d, &g));
    tweak(&mut w);
    w.to_bytes().unwrap()
}

pub fn tiny_gguf(t: &Tiny, seed: u64) -> GgufFile {
    GgufFile::parse(&tiny_gguf_with(t, seed, &Edit::default(), |_| {}), &ReadOptions::default()).unwrap()
}

/// ‖a − b‖ / ‖b‖ over flattened rows.
pub fn rel_l2(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den.max(1e-300)).sqrt()
}

/// The GPU of the CUDA tests.
pub const GPU: Device = Device::Cuda(0);

/// Whether [`GPU`] can be used; without one the test skips with a notice, unless `EFFLLM_REQUIRE_CUDA=1` (set by
/// `cargo xtask gpu-test`'s `run.sh`) makes that a failure.
pub fn gpu() -> bool {
    match GPU.check_available() {
        Ok(()) => true,
        Err(e) => {
            assert!(std::env::var("EFFLLM_REQUIRE_CUDA").as_deref() != Ok("1"), "EFFLLM_REQUIRE_CUDA=1 but {e}");
            eprintln!("skipped: {e}");
            false
        }
    }
}

/// The CUDA tests' tiny model: 3 layers, 4 query heads over 2 KV heads of 16, `weights` for the 2-D tensors.
pub fn tiny_gqa(weights: GgmlType) -> Tiny {
    Tiny { n_layer: 3, n_head: 4, n_head_kv: 2, head_dim: 16, d_ff: 96, vocab: 61, context: 128, weights, tied: false }
}
