//! The real model: every fact of foundation spec section 2.8 about `SmolLM2-135M-Instruct.Q4_1.gguf`, plus the
//! dequantised values of section 9.3 (which pin the tensor offsets byte for byte).
//!
//! The file is found by `effllm_gguf::model_cache::smollm2_path` (`EFFLLM_MODEL`, or the default cache directory).
//! Absent, the test prints a notice and passes, unless `EFFLLM_REQUIRE_MODEL=1`.

use effllm_gguf::model_cache::{self, SKIP_NOTICE, SMOLLM2_SHA256, SMOLLM2_SIZE};
use effllm_gguf::{GgmlType, GgufFile, ReadOptions, TensorView, Value, ValueType};
use sha2::{Digest, Sha256};

fn model(opts: &ReadOptions) -> Option<GgufFile> {
    match model_cache::smollm2_path() {
        Some(path) => Some(GgufFile::open(&path, opts).unwrap_or_else(|e| panic!("{}: {e}", path.display()))),
        None => {
            assert!(!model_cache::require_model(), "{}", not_found());
            println!("{SKIP_NOTICE}");
            None
        }
    }
}

fn not_found() -> String {
    format!(
        "EFFLLM_REQUIRE_MODEL=1 but the SmolLM2 GGUF was not found (EFFLLM_MODEL={:?}, default directory {:?})",
        std::env::var_os(model_cache::MODEL_ENV),
        model_cache::default_dir()
    )
}

fn f16(b: &[u8]) -> f32 {
    half::f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// Section 2.5 formulas, scalar, mul then add (no FMA), as gguf-py.
fn dequant_row(t: &TensorView<'_>, row: usize) -> Vec<f32> {
    let ne0 = t.dims_gguf[0] as usize;
    let (block, size) = t.ty.block_layout();
    let row_bytes = ne0 / block as usize * size as usize;
    let bytes = &t.bytes[row * row_bytes..(row + 1) * row_bytes];
    let mut out = Vec::with_capacity(ne0);
    match t.ty {
        GgmlType::F32 => out.extend(bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap()))),
        GgmlType::Q4_1 => {
            for b in bytes.chunks_exact(20) {
                let (d, m, qs) = (f16(&b[0..2]), f16(&b[2..4]), &b[4..20]);
                out.extend(qs.iter().map(|q| d * f32::from(q & 0xF) + m));
                out.extend(qs.iter().map(|q| d * f32::from(q >> 4) + m));
            }
        }
        GgmlType::Q8_0 => {
            for b in bytes.chunks_exact(34) {
                let d = f16(&b[0..2]);
                out.extend(b[2..34].iter().map(|&q| d * f32::from(q as i8)));
            }
        }
        other => panic!("unexpected type {other}"),
    }
    out
}

/// The first 4 dequantised values of a row, widened exactly to f64 (the spec prints them as exact decimals).
fn first4(t: &TensorView<'_>, row: usize) -> Vec<f64> {
    dequant_row(t, row)[..4].iter().map(|&v| f64::from(v)).collect()
}

/// (Frobenius norm, sum) in f64 over the dequantised f32 values.
fn norm_and_sum(t: &TensorView<'_>) -> (f64, f64) {
    let rows = t.dims_gguf[1..].iter().product::<u64>() as usize;
    let (mut sq, mut sum) = (0f64, 0f64);
    for r in 0..rows {
        for v in dequant_row(t, r) {
            sq += f64::from(v) * f64::from(v);
            sum += f64::from(v);
        }
    }
    (sq.sqrt(), sum)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs()
}

#[test]
fn smollm2_file_facts() {
    let Some(f) = model(&ReadOptions::default()) else { return };

    // Header and layout.
    assert_eq!(f.file_len() as u64, SMOLLM2_SIZE);
    assert_eq!(f.version(), 3);
    assert_eq!(f.tensor_count(), 272);
    assert_eq!(f.metadata().len(), 33);
    assert!(f.get("general.alignment").is_none());
    assert_eq!(f.alignment(), 32);
    assert_eq!(f.data_start(), 1_785_664);
    let total: usize = f.tensors().map(|t| t.nbytes()).sum();
    assert_eq!(total, 96_576_768);
    assert_eq!(f.data_start() + total, f.file_len(), "data region densely packed");
    let mut ranges: Vec<_> = f.tensor_infos().iter().map(|t| t.range()).collect();
    ranges.sort_by_key(|r| r.start);
    assert_eq!(ranges[0].start, f.data_start());
    for w in ranges.windows(2) {
        assert_eq!(w[0].end, w[1].start, "gap or overlap between tensors");
    }

    // general.*
    let s = |k: &str| f.get_str(k).unwrap_or_else(|| panic!("{k}"));
    assert_eq!(f.architecture(), Some("llama"));
    assert_eq!(s("general.type"), "model");
    assert_eq!(s("general.name"), "Smollm2 135M 8k Lc100K Mix1 Ep2");
    assert_eq!(s("general.organization"), "HuggingFaceTB");
    assert_eq!(s("general.basename"), "smollm2");
    assert_eq!(s("general.finetune"), "8k-lc100k-mix1-ep2");
    assert_eq!(s("general.size_label"), "135M");
    assert_eq!(s("general.license"), "apache-2.0");
    assert_eq!(f.get_str_array("general.languages"), Some(vec!["en"]));
    assert_eq!(f.get("general.file_type"), Some(&Value::U32(3)));
    assert_eq!(f.get("general.quantization_version"), Some(&Value::U32(2)));

    // llama.*: all u32 / f32, read through the widening accessors.
    for (k, v) in [
        ("block_count", 30),
        ("context_length", 8192),
        ("embedding_length", 576),
        ("feed_forward_length", 1536),
        ("attention.head_count", 9),
        ("attention.head_count_kv", 3),
        ("rope.dimension_count", 64),
        ("vocab_size", 49152),
    ] {
        let key = format!("llama.{k}");
        assert_eq!(f.get(&key), Some(&Value::U32(v)), "{key}");
        assert_eq!(f.get_u64(&key), Some(u64::from(v)), "{key}");
    }
    assert_eq!(f.get("llama.rope.freq_base"), Some(&Value::F32(100000.0)));
    assert_eq!(f.get("llama.attention.layer_norm_rms_epsilon"), Some(&Value::F32(1e-5)));
    assert_eq!(f.get_f64("llama.attention.layer_norm_rms_epsilon"), Some(f64::from(1e-5_f32)));
    assert_eq!(f64::from(1e-5_f32), 9.999_999_747_378_752e-6);

    // tokenizer.*
    assert_eq!(s("tokenizer.ggml.model"), "gpt2");
    assert_eq!(s("tokenizer.ggml.pre"), "smollm");
    let tokens = f.get_str_array("tokenizer.ggml.tokens").unwrap();
    assert_eq!(tokens.len(), 49_152);
    let control = [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<repo_name>",
        "<reponame>",
        "<file_sep>",
        "<filename>",
        "<gh_stars>",
        "<issue_start>",
        "<issue_comment>",
        "<issue_closed>",
        "<jupyter_start>",
        "<jupyter_text>",
        "<jupyter_code>",
        "<jupyter_output>",
        "<jupyter_script>",
        "<empty_output>",
    ];
    assert_eq!(tokens[..17], control);
    let merges = f.get_str_array("tokenizer.ggml.merges").unwrap();
    assert_eq!(merges.len(), 48_900);
    assert_eq!(merges[..5], ["Ġ t", "Ġ a", "i n", "h e", "Ġ Ġ"]);
    let token_type = f.get_array("tokenizer.ggml.token_type").unwrap();
    assert_eq!(token_type.elem_type, ValueType::I32);
    let types = token_type.as_i64s().unwrap();
    assert_eq!(types.len(), 49_152);
    assert!(types[..17].iter().all(|&t| t == 3), "ids 0..16 are control tokens");
    assert!(types[17..].iter().all(|&t| t == 1), "all others normal (no byte tokens)");
    for (k, v) in [("bos", 1), ("eos", 2), ("unknown", 0), ("padding", 2)] {
        assert_eq!(f.get(&format!("tokenizer.ggml.{k}_token_id")), Some(&Value::U32(v)), "{k}");
    }
    assert_eq!(f.get_bool("tokenizer.ggml.add_bos_token"), Some(false));
    assert_eq!(f.get_bool("tokenizer.ggml.add_space_prefix"), Some(false));
    let template = s("tokenizer.chat_template");
    assert_eq!(template.chars().count(), 368);
    assert!(template.contains("You are a helpful AI assistant named SmolLM, trained by Hugging Face"));

    // Tensors: types, dims (GGUF order) and row-major shapes.
    let count = |ty| f.tensors().filter(|t| t.ty == ty).count();
    assert_eq!((count(GgmlType::Q4_1), count(GgmlType::F32), count(GgmlType::Q8_0)), (210, 61, 1));
    assert!(f.tensor("output.weight").is_none(), "tied embeddings");
    let check = |name: &str, ty: GgmlType, dims: &[u64]| {
        let t = f.tensor(name).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!((t.ty, t.dims_gguf), (ty, dims), "{name}");
        assert_eq!(t.shape(), dims.iter().rev().map(|&d| d as usize).collect::<Vec<_>>(), "{name}");
    };
    check("token_embd.weight", GgmlType::Q8_0, &[576, 49152]);
    check("output_norm.weight", GgmlType::F32, &[576]);
    for n in 0..30 {
        let b = |x: &str| format!("blk.{n}.{x}.weight");
        check(&b("attn_q"), GgmlType::Q4_1, &[576, 576]);
        check(&b("attn_output"), GgmlType::Q4_1, &[576, 576]);
        check(&b("attn_k"), GgmlType::Q4_1, &[576, 192]);
        check(&b("attn_v"), GgmlType::Q4_1, &[576, 192]);
        check(&b("ffn_gate"), GgmlType::Q4_1, &[576, 1536]);
        check(&b("ffn_up"), GgmlType::Q4_1, &[576, 1536]);
        check(&b("ffn_down"), GgmlType::Q4_1, &[1536, 576]);
        check(&b("attn_norm"), GgmlType::F32, &[576]);
        check(&b("ffn_norm"), GgmlType::F32, &[576]);
    }
    assert_eq!(f.tensor("token_embd.weight").unwrap().shape(), vec![49152, 576]);
    assert_eq!(f.tensor("blk.0.attn_k.weight").unwrap().shape(), vec![192, 576]);

    // Offsets relative to the data start, and the embedding's size; not in name order.
    let off = |name: &str| f.tensor_info(name).unwrap().offset();
    assert_eq!(off("token_embd.weight"), 0);
    assert_eq!(f.tensor("token_embd.weight").unwrap().nbytes(), 30_081_024);
    assert_eq!(off("blk.0.attn_norm.weight"), 30_081_024);
    assert_eq!(off("blk.0.ffn_down.weight"), 30_083_328);
    assert_eq!(off("blk.0.attn_q.weight"), 32_020_992);
    assert_eq!(off("output_norm.weight"), 96_574_464);
}

#[test]
fn smollm2_tensor_values() {
    // Section 9.3: dequantised values and f64 norms/sums, which pin every tensor's bytes.
    let Some(f) = model(&ReadOptions::strict()) else { return };
    let q = f.tensor("blk.0.attn_q.weight").unwrap();
    assert_eq!(first4(&q, 1), [-0.1173095703125, -0.1173095703125, -0.19281005859375, 0.26019287109375]);
    let (norm, sum) = norm_and_sum(&q);
    assert!(close(norm, 163.55296779662945) && close(sum, 59.22322082519531), "{norm} {sum}");

    let e = f.tensor("token_embd.weight").unwrap();
    assert_eq!(first4(&e, 1), [-0.0238037109375, -0.015869140625, -0.0396728515625, 0.015869140625]);
    let (norm, sum) = norm_and_sum(&e);
    assert!(close(norm, 721.398444306046) && close(sum, -15353.04449415207), "{norm} {sum}");

    let d = f.tensor("blk.0.ffn_down.weight").unwrap();
    assert_eq!(first4(&d, 1), [0.17236328125, -0.1959228515625, 0.0145263671875, -0.0906982421875]);
    let (norm, sum) = norm_and_sum(&d);
    assert!(close(norm, 182.2638745088341) && close(sum, 150.63577270507812), "{norm} {sum}");

    let o = f.tensor("output_norm.weight").unwrap();
    assert_eq!(first4(&o, 0), [1.7578125, 1.8203125, 1.78125, 1.6015625]);

    // The shared view keeps the mapping alive after the file is dropped.
    let view = f.tensor_bytes("output_norm.weight").unwrap();
    assert!(view.file_bytes().is_mmap());
    drop(f);
    assert_eq!(f32::from_le_bytes(view[..4].try_into().unwrap()), 1.7578125);
}

#[test]
fn smollm2_sha256() {
    let Some(path) = model_cache::smollm2_path() else {
        assert!(!model_cache::require_model(), "{}", not_found());
        println!("{SKIP_NOTICE}");
        return;
    };
    let bytes = std::fs::read(path).unwrap();
    let digest: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(digest, SMOLLM2_SHA256);
}

#[test]
fn model_cache_paths() {
    // The default directory ends in effllm/models (under XDG_CACHE_HOME or ~/.cache).
    if let Some(dir) = model_cache::default_dir() {
        assert!(dir.ends_with("effllm/models"), "{}", dir.display());
    }
    if let Some(p) = model_cache::smollm2_path() {
        assert!(p.is_file());
    }
}
