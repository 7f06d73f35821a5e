//! Golden test against PyTorch: `torch.optim.AdamW` and `torch.optim.SGD` (float32, single-tensor algorithms) on
//! the fixed gradient sequences of `tests/fixtures/optim_torch.json`, written by `scripts/fixtures/optim_torch.py`.
//! Every step's parameters must match PyTorch's to `‖ours − torch‖ / ‖torch‖ < 1e-6` and `max |Δ| < 1e-6`.

use effllm_optim::{AdamW, AdamWConfig, Optimizer, Sgd, SgdConfig};
use effllm_tensor::{Device, Tensor};
use serde_json::Value;

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().expect("array").iter().map(|x| x.as_f64().expect("number") as f32).collect()
}

fn num(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("{key} missing"))
}

#[test]
fn adamw_and_sgd_match_torch_optim() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/optim_torch.json");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("the committed fixture")).unwrap();
    let version = doc["torch_version"].as_str().expect("torch_version");
    let cases = doc["cases"].as_array().expect("cases");
    assert!(cases.len() >= 8, "fixture from torch {version} has {} cases", cases.len());
    for (ci, case) in cases.iter().enumerate() {
        let hp = &case["hyperparameters"];
        let mut opt: Box<dyn Optimizer> = match case["optimizer"].as_str().unwrap() {
            "adamw" => Box::new(
                AdamW::new(AdamWConfig {
                    lr: num(hp, "lr"),
                    beta1: hp["betas"][0].as_f64().unwrap(),
                    beta2: hp["betas"][1].as_f64().unwrap(),
                    eps: num(hp, "eps"),
                    weight_decay: num(hp, "weight_decay"),
                    amsgrad: hp["amsgrad"].as_bool().unwrap(),
                })
                .unwrap(),
            ),
            "sgd" => Box::new(
                Sgd::new(SgdConfig {
                    lr: num(hp, "lr"),
                    momentum: num(hp, "momentum"),
                    dampening: num(hp, "dampening"),
                    weight_decay: num(hp, "weight_decay"),
                    nesterov: hp["nesterov"].as_bool().unwrap(),
                })
                .unwrap(),
            ),
            other => panic!("unknown optimizer {other}"),
        };
        let init = floats(&case["initial"]);
        let mut p = Tensor::from_vec(init.clone(), &[init.len()], &Device::Cpu).unwrap().requires_grad();
        let grads = case["gradients"].as_array().unwrap();
        let want_steps = case["parameters_after_each_step"].as_array().unwrap();
        assert_eq!(grads.len(), want_steps.len());
        for (s, (g, want)) in grads.iter().zip(want_steps).enumerate() {
            let g = floats(g);
            let gt = Tensor::from_vec(g.clone(), &[g.len()], &Device::Cpu).unwrap();
            opt.step_param(&mut p, &gt).unwrap();
            let got = p.to_vec::<f32>().unwrap();
            let want = floats(want);
            let num: f64 = got.iter().zip(&want).map(|(a, b)| (*a as f64 - *b as f64).powi(2)).sum::<f64>().sqrt();
            let den: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum::<f64>().sqrt();
            let max = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(
                num / den < 1e-6 && max < 1e-6,
                "case {ci} ({}) step {s}: rel L2 {:e}, max |d| {max:e} vs torch {version}\n{got:?}\n{want:?}",
                case["optimizer"],
                num / den
            );
        }
    }
}
