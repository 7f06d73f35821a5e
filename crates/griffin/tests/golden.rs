//! Golden vectors from `scripts/fixtures/griffin_reference.py` (a float32 numpy re-implementation of the reference
//! code's semantics; see its header for why not torch): selection order, the statistic, GLU gen and class mode for
//! SiLU/GELU/ReLU, the plain (OPT) FFN with density 0.5 and 0, and the magnitude baseline. Indices must match
//! exactly, floats within 1e-5 relative / 1e-6 absolute (per element) or 1e-5 relative L2 (vectors).

use effllm_model::Linear;
use effllm_tensor::{Device, Tensor};
use griffin::{Act, Ffn, GatedFfn, GriffinConfig, GriffinFfn, NeuronStat, Selection, ZeroRowPolicy, select_experts};
use serde_json::Value;

fn fixture() -> Value {
    serde_json::from_str(include_str!("fixtures/griffin_reference.json")).unwrap()
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn close(a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= 1e-6 + 1e-5 * y.abs(), "element {i}: {x} vs {y}");
    }
}

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let n: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum::<f64>().sqrt();
    let d: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum::<f64>().sqrt();
    n / d.max(1e-30)
}

fn lin(v: &Value, rows: usize, cols: usize) -> Linear {
    Linear::Dense(Tensor::from_vec(f32s(v), &[rows, cols], &Device::Cpu).unwrap())
}

fn t(v: &Value, shape: &[usize]) -> Tensor {
    Tensor::from_vec(f32s(v), shape, &Device::Cpu).unwrap()
}

fn unsorted(density: f64) -> GriffinConfig {
    GriffinConfig { sort_indices: false, ..GriffinConfig::with_density(density) }
}

#[test]
fn selection_matches_topk_order() {
    let f = fixture();
    for case in f["selection"].as_array().unwrap() {
        let stat = f32s(&case["stat"]);
        let k = case["k"].as_u64().unwrap() as usize;
        // The scores here are used directly as ranking keys (top-k ranks by value, not by square).
        let e = select_experts(&stat, k, &Selection::TopK, false).unwrap();
        assert_eq!(e.idx, u32s(&case["indices"]), "d_ff {} k {k}", stat.len());
        let w: Vec<f32> = e.idx.iter().map(|&i| stat[i as usize]).collect();
        close(&w, &f32s(&case["weights"]));
    }
}

#[test]
fn statistic_matches() {
    let f = fixture();
    for case in f["statistic"].as_array().unwrap() {
        let shape: Vec<usize> =
            case["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        let z = t(&case["z"], &shape);
        let name = case["name"].as_str().unwrap();
        if name == "zero_row_nan" {
            let mut st = NeuronStat::new(shape[1]);
            st.update(&z, None, ZeroRowPolicy::Nan).unwrap();
            assert_eq!(case["s_is_nan"].as_bool(), Some(true));
            assert!(st.scores().iter().all(|v| v.is_nan()));
            continue;
        }
        let mut st = NeuronStat::new(shape[1]);
        st.update(&z, None, ZeroRowPolicy::Skip).unwrap();
        close(&st.scores(), &f32s(&case["s"]));
        if let Some(idx) = case.get("indices") {
            let k = case["k"].as_u64().unwrap() as usize;
            assert_eq!(select_experts(st.sumsq(), k, &Selection::TopK, false).unwrap().idx, u32s(idx), "{name}");
        }
        if let Some(zero) = case.get("zero_columns") {
            for j in u32s(zero) {
                assert_eq!(st.sumsq()[j as usize], 0.0);
            }
        }
    }
}

#[test]
fn glu_gen_and_class_mode() {
    let f = fixture();
    let (d, d_ff) = (16, 40);
    for case in f["glu"].as_array().unwrap() {
        let act = match case["act"].as_str().unwrap() {
            "silu" => Act::Silu,
            "gelu_erf" => Act::GeluErf,
            _ => Act::Relu,
        };
        let ffn =
            Ffn::glu(lin(&case["w_gate"], d_ff, d), lin(&case["w_up"], d_ff, d), lin(&case["w_down"], d, d_ff), act)
                .unwrap();
        let density = case["density"].as_f64().unwrap();
        let g = GriffinFfn::new(ffn.clone(), unsorted(density), 0).unwrap();
        let x = t(&case["x"], &[9, d]);
        let mut st = g.new_stat();
        let dense = g.prefill(&x, &mut st).unwrap().to_vec::<f32>().unwrap();
        assert!(rel_l2(&dense, &f32s(&case["dense"])) < 1e-5);
        assert!(rel_l2(&ffn.intermediate(&x).unwrap().to_vec::<f32>().unwrap(), &f32s(&case["z"])) < 1e-5);
        close(&st.scores(), &f32s(&case["s"]));
        let p = g.finalize(&st).unwrap();
        assert_eq!(p.experts().idx, u32s(&case["indices"]), "{act:?}: reference (score) order");
        let xs = t(&case["decode_x"], &[3, d]);
        let y = g.decode(&xs, &p).unwrap().to_vec::<f32>().unwrap();
        let want: Vec<f32> = case["decode"].as_array().unwrap().iter().flat_map(f32s).collect();
        assert!(rel_l2(&y, &want) < 1e-5, "{act:?}: {}", rel_l2(&y, &want));
        // The project default (sorted E) gives the same outputs up to f32 summation order.
        let gs = GriffinFfn::new(ffn.clone(), GriffinConfig::with_density(density), 0).unwrap();
        let ys = gs.decode(&xs, &gs.finalize(&st).unwrap()).unwrap().to_vec::<f32>().unwrap();
        assert!(rel_l2(&ys, &want) < 1e-5);
        // Class mode.
        let yc = g.last_token_masked(&x).unwrap().to_vec::<f32>().unwrap();
        assert!(rel_l2(&yc, &f32s(&case["class_out"])) < 1e-5);
    }
}

#[test]
fn plain_ffn_and_density_zero() {
    let f = fixture();
    let c = &f["plain"];
    let (d, d_ff) = (16, 40);
    let ffn = Ffn::plain(
        lin(&c["w1"], d_ff, d),
        Some(t(&c["b1"], &[d_ff])),
        lin(&c["w2"], d, d_ff),
        Some(t(&c["b2"], &[d])),
        Act::Relu,
    )
    .unwrap();
    let g = GriffinFfn::new(ffn.clone(), unsorted(0.5), 0).unwrap();
    let x = t(&c["x"], &[9, d]);
    let mut st = g.new_stat();
    let dense = g.prefill(&x, &mut st).unwrap().to_vec::<f32>().unwrap();
    assert!(rel_l2(&dense, &f32s(&c["dense"])) < 1e-5);
    let p = g.finalize(&st).unwrap();
    assert_eq!(p.experts().idx, u32s(&c["indices"]));
    let xs = t(&c["decode_x"], &[3, d]);
    let want: Vec<f32> = c["decode"].as_array().unwrap().iter().flat_map(f32s).collect();
    assert!(rel_l2(&g.decode(&xs, &p).unwrap().to_vec::<f32>().unwrap(), &want) < 1e-5);
    let g0 = GriffinFfn::new(ffn, unsorted(0.0), 0).unwrap();
    let p0 = g0.finalize(&st).unwrap();
    let want0: Vec<f32> = c["decode_density0"].as_array().unwrap().iter().flat_map(f32s).collect();
    assert_eq!(g0.decode(&xs, &p0).unwrap().to_vec::<f32>().unwrap(), want0);
}

#[test]
fn magnitude_baseline() {
    let f = fixture();
    let (d, d_ff) = (16, 40);
    for (layer, case) in f["magnitude"].as_array().unwrap().iter().enumerate() {
        let ffn = Ffn::glu(
            lin(&case["w_gate"], d_ff, d),
            lin(&case["w_up"], d_ff, d),
            lin(&case["w_down"], d, d_ff),
            Act::Silu,
        )
        .unwrap();
        close(&ffn.weight_row_norms().unwrap(), &f32s(&case["stat"]));
        let cfg = GriffinConfig { selection: Selection::Magnitude, ..unsorted(case["density"].as_f64().unwrap()) };
        let g = GriffinFfn::new(ffn, cfg, layer).unwrap();
        assert_eq!(g.magnitude_experts().unwrap().idx, u32s(&case["indices"]));
    }
}
