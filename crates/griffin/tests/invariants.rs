//! Spec §5 invariants 1, 3–11 and 13 on stand-alone FFNs, against the f64 reference (`griffin::reference`).

mod common;

use common::*;
use effllm_tensor::quant::QuantType;
use effllm_tensor::{Device, Tensor};
use griffin::reference::{self, RefFfn};
use griffin::{
    Act, ExpertSet, GatedFfn, GriffinConfig, GriffinFfn, NeuronStat, PrunedStorage, Selection, StatScope,
    ZeroRowPolicy, select_experts, select_experts_stream,
};
use proptest::prelude::*;

fn cfg(density: f64) -> GriffinConfig {
    GriffinConfig::with_density(density)
}

fn acts() -> impl Strategy<Value = Act> {
    prop_oneof![Just(Act::Silu), Just(Act::Gelu), Just(Act::GeluErf), Just(Act::Relu)]
}

fn stat_of(z: &Tensor) -> NeuronStat {
    let mut st = NeuronStat::new(z.shape()[1]);
    st.update(z, None, ZeroRowPolicy::Skip).unwrap();
    st
}

/// A random prompt intermediate `[s, d_ff]` with negative entries (as SiLU/GELU and the up projection give).
fn z_prompt(s: usize, d_ff: usize, seed: u64) -> Tensor {
    tensor(s, d_ff, seed, 11)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// 1. Density 1 with sorted E is bitwise the dense FFN (f32 and Q4_1 weights); unsorted E matches to f32
    ///    rounding.
    #[test]
    fn density_one_is_dense(d in 16usize..48, d_ff in 40usize..160, s in 1usize..12, seed in 0u64..1000,
                            act in acts(), quant in any::<bool>()) {
        let (d, d_ff, store) = if quant { (64, 128, Store::Q(QuantType::Q4_1)) } else { (d, d_ff, Store::F32) };
        let ffn = glu(d, d_ff, seed, act, store);
        let g = GriffinFfn::new(ffn.clone(), cfg(1.0), 0).unwrap();
        let x = tensor(s, d, seed, 20);
        let mut st = g.new_stat();
        g.prefill(&x, &mut st).unwrap();
        let p = g.finalize(&st).unwrap();
        prop_assert_eq!(p.k(), d_ff);
        let xt = tensor(3, d, seed, 21);
        let dense = ffn.forward(&xt).unwrap().to_vec::<f32>().unwrap();
        prop_assert_eq!(g.decode(&xt, &p).unwrap().to_vec::<f32>().unwrap(), dense.clone());
        // Unsorted (score order): the same neurons in another order.
        let g2 = GriffinFfn::new(ffn.clone(), GriffinConfig { sort_indices: false, ..cfg(1.0) }, 0).unwrap();
        let p2 = g2.finalize(&st).unwrap();
        let y2: Vec<f64> = g2.decode(&xt, &p2).unwrap().to_vec_f64().unwrap();
        let dense64: Vec<f64> = dense.iter().map(|&v| f64::from(v)).collect();
        prop_assert!(rel_l2(&y2, &dense64) < 1e-5, "rel {}", rel_l2(&y2, &dense64));
    }

    /// 2 (FFN level). Prefill outputs are bitwise the dense FFN's at any density.
    #[test]
    fn prefill_is_dense(d in 16usize..48, d_ff in 40usize..160, s in 1usize..20, seed in 0u64..1000,
                        density in 0.0f64..1.0) {
        let ffn = glu(d, d_ff, seed, Act::Silu, Store::F32);
        let g = GriffinFfn::new(ffn.clone(), cfg(density), 0).unwrap();
        let x = tensor(s, d, seed, 22);
        let mut st = g.new_stat();
        prop_assert_eq!(g.prefill(&x, &mut st).unwrap().to_vec::<f32>().unwrap(),
                        ffn.forward(&x).unwrap().to_vec::<f32>().unwrap());
    }

    /// 3b/3c/3d and 13. Row permutation, positive row scaling and chunking leave E unchanged; chunking leaves
    /// `acc` bitwise unchanged; under `LastMultiTokenChunk` E is the last chunk's.
    #[test]
    fn selection_invariances(s in 2usize..40, d_ff in 40usize..256, seed in 0u64..1000, density in 0.05f64..1.0,
                             split in 1usize..39, scale_pow in -6i32..6, c in 0.01f64..100.0) {
        let split = split.min(s - 1);
        let z = z_prompt(s, d_ff, seed);
        let k = griffin::k_for_density(d_ff, density);
        let whole = stat_of(&z);
        let e = select_experts(whole.sumsq(), k, &Selection::TopK, true).unwrap();
        // 3d: chunks.
        let mut chunked = NeuronStat::new(d_ff);
        chunked.update(&z.narrow(0, 0, split).unwrap(), None, ZeroRowPolicy::Skip).unwrap();
        chunked.update(&z.narrow(0, split, s - split).unwrap(), None, ZeroRowPolicy::Skip).unwrap();
        prop_assert_eq!(chunked.sumsq(), whole.sumsq());
        // 3b: reverse the rows.
        let rev: Vec<u32> = (0..s as u32).rev().collect();
        let zr = z.index_select(0, &Tensor::from_slice(&rev, &[s], &Device::Cpu).unwrap()).unwrap();
        let pr = stat_of(&zr);
        let (a, b): (Vec<f64>, Vec<f64>) =
            (pr.sumsq().iter().map(|&v| f64::from(v)).collect(), whole.sumsq().iter().map(|&v| f64::from(v)).collect());
        prop_assert!(rel_l2(&a, &b) < 1e-6);
        if topk_gap_ok(whole.sumsq(), k) {
            prop_assert_eq!(&select_experts(pr.sumsq(), k, &Selection::TopK, true).unwrap(), &e);
        }
        // 3c: scale row 0 by 2^p (exact: acc bitwise) and by an arbitrary c > 0 (E unchanged).
        let row_scale = |f: f64| {
            let mut v = z.to_vec::<f32>().unwrap();
            v[..d_ff].iter_mut().for_each(|x| *x = (f64::from(*x) * f) as f32);
            Tensor::from_vec(v, &[s, d_ff], &Device::Cpu).unwrap()
        };
        let pow2 = stat_of(&row_scale(2f64.powi(scale_pow)));
        prop_assert_eq!(pow2.sumsq(), whole.sumsq());
        if topk_gap_ok(whole.sumsq(), k) {
            prop_assert_eq!(&select_experts(stat_of(&row_scale(c)).sumsq(), k, &Selection::TopK, true).unwrap(), &e);
        }
        // 13: LastMultiTokenChunk keeps only the last chunk.
        let ffn_like = stat_of(&z.narrow(0, split, s - split).unwrap());
        let mut last = NeuronStat::new(d_ff);
        for chunk in [z.narrow(0, 0, split).unwrap(), z.narrow(0, split, s - split).unwrap()] {
            last.reset(); // what StatScope::LastMultiTokenChunk does per chunk (see GriffinFfn::prefill)
            last.update(&chunk, None, ZeroRowPolicy::Skip).unwrap();
        }
        prop_assert_eq!(last.sumsq(), ffn_like.sumsq());
    }

    /// 13 through `GriffinFfn::prefill`: WholePrompt accumulates, LastMultiTokenChunk restarts per chunk.
    #[test]
    fn scope_switch(d in 16usize..40, d_ff in 40usize..128, s in 2usize..20, split in 1usize..19, seed in 0u64..500) {
        let split = split.min(s - 1);
        let ffn = glu(d, d_ff, seed, Act::Silu, Store::F32);
        let x = tensor(s, d, seed, 23);
        let (x1, x2) = (x.narrow(0, 0, split).unwrap(), x.narrow(0, split, s - split).unwrap());
        let run = |scope: StatScope, parts: &[&Tensor]| {
            let g = GriffinFfn::new(ffn.clone(), GriffinConfig { scope, ..cfg(0.5) }, 0).unwrap();
            let mut st = g.new_stat();
            parts.iter().for_each(|p| { g.prefill(p, &mut st).unwrap(); });
            g.select(&st).unwrap()
        };
        prop_assert_eq!(run(StatScope::WholePrompt, &[&x1, &x2]), run(StatScope::WholePrompt, &[&x]));
        prop_assert_eq!(run(StatScope::LastMultiTokenChunk, &[&x1, &x2]), run(StatScope::WholePrompt, &[&x2]));
    }

    /// 4a/4b and the reference statistic: Σ s² = S, 0 ≤ s ≤ √S, s matches the f64 reference.
    #[test]
    fn statistic_identities(s in 1usize..64, d_ff in 40usize..256, seed in 0u64..1000) {
        let z = z_prompt(s, d_ff, seed);
        let st = stat_of(&z);
        prop_assert_eq!(st.rows(), s);
        let total: f64 = st.sumsq().iter().map(|&v| f64::from(v)).sum();
        prop_assert!((total - s as f64).abs() < 1e-5 * s as f64 * (d_ff as f64).sqrt());
        let (r, rows) = reference::statistic(&rows_f64(&z), ZeroRowPolicy::Skip);
        prop_assert_eq!(rows, s);
        let scores: Vec<f64> = st.scores().iter().map(|&v| f64::from(v)).collect();
        prop_assert!(rel_l2(&scores, &r) < 1e-6);
        for &v in &scores {
            prop_assert!((0.0..=(s as f64).sqrt() * (1.0 + 1e-6)).contains(&v));
        }
    }

    /// 5 and the reference top-k: |E| = ⌊density·d_ff⌋, unique, in range, equal to the reference's top-k set.
    #[test]
    fn set_properties(s in 1usize..30, d_ff in 40usize..256, seed in 0u64..1000, density in 0.0f64..=1.0) {
        let z = z_prompt(s, d_ff, seed);
        let st = stat_of(&z);
        let k = griffin::k_for_density(d_ff, density);
        prop_assert_eq!(k, (d_ff as f64 * density).floor() as usize);
        let e = select_experts(st.sumsq(), k, &Selection::TopK, false).unwrap();
        prop_assert_eq!(e.len(), k);
        prop_assert!(ExpertSet::new(e.idx.clone(), d_ff).is_ok());
        if topk_gap_ok(st.sumsq(), k) {
            let (r, _) = reference::statistic(&rows_f64(&z), ZeroRowPolicy::Skip);
            let want: Vec<u32> = reference::topk(&r, k).into_iter().map(|j| j as u32).collect();
            prop_assert_eq!(e.idx, want);
        }
    }

    /// 6. Gathered FF_E equals the masked dense FFN (reference, f64) for GLU with every activation and for the
    ///    plain ReLU FFN with biases, for f32, Q4_0, Q4_1 (packed down) and Q8_0 (f32 columns) weights; the mask
    ///    form (`PrunedStorage::Gather`) too.
    #[test]
    fn gather_equals_mask(seed in 0u64..1000, act in acts(), store_i in 0usize..4, plain in any::<bool>(),
                          density in 0.05f64..1.0, t in 1usize..4, sort in any::<bool>()) {
        let store = [Store::F32, Store::Q(QuantType::Q4_0), Store::Q(QuantType::Q4_1), Store::Q(QuantType::Q8_0)][store_i];
        let (d, d_ff) = (64, 160);
        let ffn = if plain { plain_relu(d, d_ff, seed, store) } else { glu(d, d_ff, seed, act, store) };
        let r = RefFfn::from_ffn(&ffn).unwrap();
        let z = z_prompt(8, d_ff, seed);
        let k = griffin::k_for_density(d_ff, density);
        let e = select_experts(stat_of(&z).sumsq(), k, &Selection::TopK, sort).unwrap();
        let ids: Vec<usize> = e.idx.iter().map(|&j| j as usize).collect();
        let x = tensor(t, d, seed, 24);
        let want: Vec<f64> = rows_f64(&x).iter().flat_map(|row| r.masked(row, &ids)).collect();
        let want_g: Vec<f64> = rows_f64(&x).iter().flat_map(|row| r.gathered(row, &ids)).collect();
        prop_assert!(rel_l2(&want_g, &want) < 1e-12);
        for storage in [PrunedStorage::Copy, PrunedStorage::Gather] {
            let p = ffn.gather(&e, storage).unwrap();
            if storage == PrunedStorage::Copy && matches!(store, Store::Q(QuantType::Q4_0 | QuantType::Q4_1)) && k < d_ff {
                prop_assert!(p.is_packed());
            }
            let y = p.forward(&x).unwrap().to_vec_f64().unwrap();
            let tol = 1e-5 * (d_ff as f64).sqrt();
            prop_assert!(rel_l2(&y, &want) < tol, "{:?} {:?}: rel {}", storage, store, rel_l2(&y, &want));
        }
    }

    /// 7. ReLU: neurons never active on the prompt get s_j = 0; with k ≥ #active, FF_E reproduces the dense FFN on
    ///    the prompt tokens.
    #[test]
    fn relu_inactive_neurons(seed in 0u64..1000, s in 1usize..10) {
        let (d, d_ff) = (32, 96);
        let ffn = plain_relu(d, d_ff, seed, Store::F32);
        // Make every third neuron dead: b_1 very negative.
        let mut b1 = ffn.b1().unwrap().to_vec::<f32>().unwrap();
        b1.iter_mut().step_by(3).for_each(|b| *b = -1e3);
        let ffn = griffin::Ffn::plain(ffn.up().clone(), Some(Tensor::from_vec(b1, &[d_ff], &Device::Cpu).unwrap()),
                                      ffn.down_weight().clone(), ffn.b2().cloned(), Act::Relu).unwrap();
        let x = tensor(s, d, seed, 25);
        let z = ffn.intermediate(&x).unwrap();
        let st = stat_of(&z);
        let zv = z.to_vec::<f32>().unwrap();
        let active: Vec<bool> = (0..d_ff).map(|j| (0..s).any(|i| zv[i * d_ff + j] != 0.0)).collect();
        for (j, &a) in active.iter().enumerate() {
            if !a {
                prop_assert_eq!(st.sumsq()[j], 0.0);
            }
        }
        let n_active = active.iter().filter(|&&a| a).count();
        let e = select_experts(st.sumsq(), n_active.max(1), &Selection::TopK, true).unwrap();
        let p = ffn.gather(&e, PrunedStorage::Copy).unwrap();
        let y = p.forward(&x).unwrap().to_vec_f64().unwrap();
        let dense = ffn.forward(&x).unwrap().to_vec_f64().unwrap();
        prop_assert!(rel_l2(&y, &dense) < 1e-6);
    }

    /// 8a/8b. Density 0 decodes to 0 (GLU) or b_2 (plain); the magnitude set is the input-independent top-k of
    ///    ‖W_gate[j]‖·‖W_up[j]‖ (or ‖W_1[j]‖).
    #[test]
    fn degenerate_and_magnitude(seed in 0u64..1000, plain in any::<bool>(), density in 0.05f64..1.0) {
        let (d, d_ff) = (32, 96);
        let ffn = if plain { plain_relu(d, d_ff, seed, Store::F32) } else { glu(d, d_ff, seed, Act::Silu, Store::F32) };
        let x = tensor(2, d, seed, 26);
        let g0 = GriffinFfn::new(ffn.clone(), cfg(0.0), 0).unwrap();
        let mut st = g0.new_stat();
        g0.prefill(&x, &mut st).unwrap();
        let p0 = g0.finalize(&st).unwrap();
        prop_assert_eq!(p0.k(), 0);
        let y0 = g0.decode(&x, &p0).unwrap().to_vec::<f32>().unwrap();
        let want: Vec<f32> = match ffn.b2() { Some(b) => { let b = b.to_vec::<f32>().unwrap(); [b.clone(), b].concat() } None => vec![0.0; 2 * d] };
        prop_assert_eq!(y0, want);
        let gm = GriffinFfn::new(ffn.clone(), GriffinConfig { selection: Selection::Magnitude, ..cfg(density) }, 0).unwrap();
        let mut a = gm.new_stat();
        gm.prefill(&x, &mut a).unwrap();
        let mut b = gm.new_stat();
        gm.prefill(&tensor(5, d, seed + 1, 27), &mut b).unwrap();
        let (ea, eb) = (gm.select(&a).unwrap(), gm.select(&b).unwrap());
        prop_assert_eq!(&ea, &eb);
        let scores = RefFfn::from_ffn(&ffn).unwrap().magnitude_scores();
        let k = griffin::k_for_density(d_ff, density);
        let norms = ffn.weight_row_norms().unwrap();
        if topk_gap_ok(&norms, k) {
            let mut want: Vec<u32> = reference::topk(&scores, k).into_iter().map(|j| j as u32).collect();
            want.sort_unstable();
            prop_assert_eq!(ea.idx, want);
        }
    }

    /// 9. Sampling methods: unique, the right counts, topk_sample's first half is the top set, `sample` avoids zero
    ///    scores while ≥ k are positive; the same seed gives the same set.
    #[test]
    fn sampling_methods(d_ff in 8usize..200, seed in 0u64..1000, kf in 0.0f64..=1.0, zeros in 0usize..100) {
        let k = griffin::k_for_density(d_ff, kf);
        let mut scores: Vec<f32> = randn(d_ff, seed, 3, 1.0).iter().map(|v| v * v + 1e-3).collect();
        let zeros = zeros.min(d_ff - k);
        scores.iter_mut().take(zeros).for_each(|v| *v = 0.0);
        for sel in [Selection::Sample { seed }, Selection::Random { seed },
                    Selection::TopKSample { seed, exact_k: true }, Selection::TopKSample { seed, exact_k: false }] {
            let e = select_experts_stream(&scores, k, &sel, false, 3).unwrap();
            let want = if sel == (Selection::TopKSample { seed, exact_k: false }) { 2 * (k / 2) } else { k };
            prop_assert_eq!(e.len(), want);
            prop_assert!(ExpertSet::new(e.idx.clone(), d_ff).is_ok());
            prop_assert_eq!(&e, &select_experts_stream(&scores, k, &sel, false, 3).unwrap());
            if let Selection::TopKSample { .. } = sel {
                let top = select_experts(&scores, k / 2, &Selection::TopK, false).unwrap();
                prop_assert_eq!(&e.idx[..k / 2], &top.idx[..]);
            }
            if let Selection::Sample { .. } = sel {
                prop_assert!(e.idx.iter().all(|&j| scores[j as usize] > 0.0));
            }
        }
    }

    /// 10. Class mode: rows 0..S−2 bitwise dense; row S−1 the mask form with E from rows 0..S−2 (reference).
    #[test]
    fn class_mode(seed in 0u64..1000, s in 2usize..16, density in 0.05f64..1.0, act in acts()) {
        let (d, d_ff) = (32, 96);
        let ffn = glu(d, d_ff, seed, act, Store::F32);
        let g = GriffinFfn::new(ffn.clone(), cfg(density), 0).unwrap();
        let x = tensor(s, d, seed, 28);
        let y = g.last_token_masked(&x).unwrap();
        let dense = ffn.forward(&x).unwrap();
        prop_assert_eq!(y.narrow(0, 0, s - 1).unwrap().to_vec::<f32>().unwrap(),
                        dense.narrow(0, 0, s - 1).unwrap().to_vec::<f32>().unwrap());
        let z = ffn.intermediate(&x.narrow(0, 0, s - 1).unwrap()).unwrap();
        let k = griffin::k_for_density(d_ff, density);
        if topk_gap_ok(stat_of(&z).sumsq(), k) {
            let want = RefFfn::from_ffn(&ffn).unwrap().class_mode(&rows_f64(&x), k, ZeroRowPolicy::Skip);
            let last = y.narrow(0, s - 1, 1).unwrap().to_vec_f64().unwrap();
            prop_assert!(rel_l2(&last, &want[s - 1]) < 1e-5);
        }
    }

    /// 11. Skip: inserting an all-zero row anywhere leaves acc and E unchanged; Nan: every score becomes NaN.
    #[test]
    fn zero_rows(s in 1usize..20, d_ff in 40usize..200, seed in 0u64..1000, at in 0usize..20) {
        let at = at.min(s);
        let z = z_prompt(s, d_ff, seed);
        let mut v = z.to_vec::<f32>().unwrap();
        v.splice(at * d_ff..at * d_ff, std::iter::repeat_n(0.0, d_ff));
        let zz = Tensor::from_vec(v, &[s + 1, d_ff], &Device::Cpu).unwrap();
        let mut skip = NeuronStat::new(d_ff);
        skip.update(&zz, None, ZeroRowPolicy::Skip).unwrap();
        let plain_stat = stat_of(&z);
        prop_assert_eq!(skip.sumsq(), plain_stat.sumsq());
        prop_assert_eq!(skip.rows(), s);
        let mut nan = NeuronStat::new(d_ff);
        nan.update(&zz, None, ZeroRowPolicy::Nan).unwrap();
        prop_assert!(nan.sumsq().iter().all(|v| v.is_nan()));
        let (r, _) = reference::statistic(&rows_f64(&zz), ZeroRowPolicy::Nan);
        prop_assert!(r.iter().all(|v| v.is_nan()));
        // Sampling cannot use NaN scores; top-k ranks NaN first (ties by index): the first k neurons.
        let sampled = select_experts(nan.sumsq(), 1, &Selection::Sample { seed: 1 }, true);
        prop_assert!(sampled.is_err());
        prop_assert_eq!(select_experts(nan.sumsq(), 3.min(d_ff), &Selection::TopK, true).unwrap().idx, vec![0, 1, 2]);
    }

    /// Padding rows excluded by the valid mask equal the statistic of the valid rows alone.
    #[test]
    fn valid_row_mask(s in 1usize..20, d_ff in 40usize..128, seed in 0u64..1000, mask_bits in any::<u32>()) {
        let z = z_prompt(s, d_ff, seed);
        let valid: Vec<bool> = (0..s).map(|i| mask_bits >> (i % 32) & 1 == 1).collect();
        let mut a = NeuronStat::new(d_ff);
        a.update(&z, Some(&valid), ZeroRowPolicy::Skip).unwrap();
        let keep: Vec<u32> = (0..s as u32).filter(|&i| valid[i as usize]).collect();
        let mut b = NeuronStat::new(d_ff);
        if !keep.is_empty() {
            b.update(&z.index_select(0, &Tensor::from_slice(&keep, &[keep.len()], &Device::Cpu).unwrap()).unwrap(),
                     None, ZeroRowPolicy::Skip).unwrap();
        }
        prop_assert_eq!(a, b);
    }
}

/// 4c. The worked example: Z = [[3,4,0],[0,0,2]] gives s = [0.6, 0.8, 1.0], Σ s² = 2, top-2 = {2, 1}.
#[test]
fn worked_example() {
    let z = Tensor::from_vec(vec![3f32, 4.0, 0.0, 0.0, 0.0, 2.0], &[2, 3], &Device::Cpu).unwrap();
    let st = stat_of(&z);
    let s = st.scores();
    assert!((s[0] - 0.6).abs() < 1e-7 && (s[1] - 0.8).abs() < 1e-7 && (s[2] - 1.0).abs() < 1e-7, "{s:?}");
    assert!((st.sumsq().iter().sum::<f32>() - 2.0).abs() < 1e-6);
    assert_eq!(select_experts(st.sumsq(), 2, &Selection::TopK, false).unwrap().idx, vec![2, 1]);
    assert_eq!(select_experts(st.sumsq(), 2, &Selection::TopK, true).unwrap().idx, vec![1, 2]);
    let (r, rows) = reference::statistic(&[vec![3.0, 4.0, 0.0], vec![0.0, 0.0, 2.0]], ZeroRowPolicy::Skip);
    assert_eq!(rows, 2);
    assert_eq!(reference::topk(&r, 2), vec![2, 1]);
}

/// Ties go to the lower index.
#[test]
fn ties_lower_index() {
    let e = select_experts(&[1.0, 2.0, 2.0, 1.0, 2.0], 2, &Selection::TopK, false).unwrap();
    assert_eq!(e.idx, vec![1, 2]);
    assert_eq!(reference::topk(&[1.0, 2.0, 2.0, 1.0, 2.0], 2), vec![1, 2]);
}

/// The short-prompt fallback: fewer prompt rows than `min_prompt_tokens` keep every neuron (dense) or the
/// magnitude set.
#[test]
fn short_prompt_fallback() {
    let ffn = glu(32, 96, 5, Act::Silu, Store::F32);
    let x = tensor(3, 32, 5, 29);
    let base = GriffinConfig { min_prompt_tokens: 4, ..GriffinConfig::default() };
    let g = GriffinFfn::new(ffn.clone(), base.clone(), 0).unwrap();
    let mut st = g.new_stat();
    g.prefill(&x, &mut st).unwrap();
    assert_eq!(g.select(&st).unwrap(), ExpertSet::all(96));
    let gm = GriffinFfn::new(
        ffn.clone(),
        GriffinConfig { short_prompt: griffin::ShortPromptFallback::Magnitude, ..base },
        0,
    )
    .unwrap();
    assert_eq!(gm.select(&st).unwrap(), gm.magnitude_experts().unwrap());
    assert_eq!(gm.select(&st).unwrap().len(), 48);
}
