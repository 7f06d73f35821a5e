//! Hugging Face checkpoints: a tiny GGUF model exported to safetensors in HF layout (W_q/W_k rows un-permuted,
//! NeoX RoPE) loads to the same logits; malformed checkpoints are typed errors.

mod common;

use common::{Tiny, tiny_gguf};
use effllm_gguf::GgmlType;
use effllm_model::{Batch, CausalLm, LlamaModel, LoadOptions, LogitRows, ModelError, WeightFormat};
use safetensors::{Dtype, tensor::TensorView};

/// HF row of GGUF row `g` within a head of size `d`: GGUF row `2i + j` = HF row `j·d/2 + i`.
fn hf_row(g: usize, d: usize) -> usize {
    (g % 2) * d / 2 + g / 2
}

fn export(m: &LlamaModel, dir: &std::path::Path, drop: Option<&str>) {
    let cfg = m.config();
    let hd = cfg.head_dim;
    let dense = |l: &effllm_model::Linear| -> (Vec<usize>, Vec<f32>) {
        let t = l.to_dense_f32().unwrap();
        (t.shape().to_vec(), t.to_vec::<f32>().unwrap())
    };
    let unpermute = |(shape, w): (Vec<usize>, Vec<f32>)| -> (Vec<usize>, Vec<f32>) {
        let cols = shape[1];
        let mut out = vec![0f32; w.len()];
        for r in 0..shape[0] {
            let (head, g) = (r / hd, r % hd);
            let hf = head * hd + hf_row(g, hd);
            out[hf * cols..(hf + 1) * cols].copy_from_slice(&w[r * cols..(r + 1) * cols]);
        }
        (shape, out)
    };
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut put = |name: String, (shape, v): (Vec<usize>, Vec<f32>)| {
        tensors.push((name, shape, v.iter().flat_map(|x| x.to_le_bytes()).collect()));
    };
    put("model.embed_tokens.weight".into(), dense(&m.embedding().as_linear()));
    for (i, l) in m.layers().iter().enumerate() {
        let p = |s: &str| format!("model.layers.{i}.{s}.weight");
        let vec = |t: &effllm_model::Tensor| (t.shape().to_vec(), t.to_vec::<f32>().unwrap());
        put(p("input_layernorm"), vec(&l.attn_norm));
        put(p("post_attention_layernorm"), vec(&l.ffn_norm));
        put(p("self_attn.q_proj"), unpermute(dense(&l.wq)));
        put(p("self_attn.k_proj"), unpermute(dense(&l.wk)));
        put(p("self_attn.v_proj"), dense(&l.wv));
        put(p("self_attn.o_proj"), dense(&l.wo));
        put(p("mlp.gate_proj"), dense(&l.ffn.gate));
        put(p("mlp.up_proj"), dense(&l.ffn.up));
        put(p("mlp.down_proj"), dense(&l.ffn.down));
    }
    let n = m.final_norm_weight();
    put("model.norm.weight".into(), (n.shape().to_vec(), n.to_vec::<f32>().unwrap()));
    tensors.retain(|(name, ..)| Some(name.as_str()) != drop);
    let views: Vec<(String, TensorView<'_>)> =
        tensors.iter().map(|(n, s, b)| (n.clone(), TensorView::new(Dtype::F32, s.clone(), b).unwrap())).collect();
    std::fs::write(dir.join("model.safetensors"), safetensors::serialize(views, None).unwrap()).unwrap();
    std::fs::write(dir.join("config.json"), cfg.to_hf_json()).unwrap();
}

fn temp_dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("effllm-st-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn hf_checkpoint_gives_the_gguf_logits() {
    let t = Tiny { weights: GgmlType::Q8_0, ..Tiny::default_f32() };
    let m = LlamaModel::from_gguf(&tiny_gguf(&t, 3), &LoadOptions::default()).unwrap();
    let dir = temp_dir("ok");
    export(&m, &dir, None);
    let hf =
        LlamaModel::open_safetensors(&dir, &LoadOptions { format: WeightFormat::F32, ..Default::default() }).unwrap();
    assert_eq!(hf.config().rope.style, effllm_tensor::RopeStyle::NeoX);
    let toks = [3u32, 17, 5, 40, 2, 9];
    let a = m.forward(&Batch::causal(&toks, 0), &mut m.new_cache(), &LogitRows::All).unwrap().to_vec::<f32>().unwrap();
    let b =
        hf.forward(&Batch::causal(&toks, 0), &mut hf.new_cache(), &LogitRows::All).unwrap().to_vec::<f32>().unwrap();
    let err = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(err < 1e-4, "max |Δlogit| {err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn malformed_checkpoints_are_typed_errors() {
    let t = Tiny::default_f32();
    let m = LlamaModel::from_gguf(&tiny_gguf(&t, 4), &LoadOptions::default()).unwrap();
    let dir = temp_dir("missing");
    export(&m, &dir, Some("model.layers.1.mlp.up_proj.weight"));
    let e = LlamaModel::open_safetensors(&dir, &LoadOptions::default()).unwrap_err();
    assert!(matches!(&e, ModelError::MissingTensor(n) if n == "model.layers.1.mlp.up_proj.weight"), "{e}");
    std::fs::write(dir.join("model.safetensors"), b"\x10\x00\x00\x00\x00\x00\x00\x00{not json").unwrap();
    assert!(matches!(LlamaModel::open_safetensors(&dir, &LoadOptions::default()), Err(ModelError::Safetensors(_))));
    std::fs::write(dir.join("config.json"), r#"{"model_type": "gpt2"}"#).unwrap();
    assert!(matches!(
        LlamaModel::open_safetensors(&dir, &LoadOptions::default()),
        Err(ModelError::UnsupportedArchitecture { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(matches!(LlamaModel::open_safetensors(&dir, &LoadOptions::default()), Err(ModelError::Io { .. })));
}
