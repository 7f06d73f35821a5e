//! The logits-processing chain and the sampler: known values, invariants, the optimised code against the naive
//! f64 reference, determinism, and typed errors.

use approx::relative_eq;
use effllm_sampling::{
    FilterOrder, LogitsProcessor, NucleusMode, Sampler, SamplingError, SamplingParams, SeededUniforms, Token,
    UniformSource, argmax, process_logits, reference, sample_from_probs,
};
use proptest::prelude::*;

fn p(logits: &[f32], params: SamplingParams) -> Vec<f32> {
    process_logits(logits, &params, &[]).unwrap()
}

fn close(a: &[f32], b: &[f64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(&x, &y)| relative_eq!(x as f64, y, epsilon = 1e-7, max_relative = 1e-5))
}

#[test]
fn greedy_lowest_index_on_ties_and_no_draw() {
    let mut s = Sampler::new(SamplingParams::greedy()).unwrap();
    assert_eq!(s.sample(&[1.0, 3.0, 3.0, -2.0], &[]).unwrap(), 1);
    assert_eq!(s.position(), 0, "greedy consumes no draw");
    assert_eq!(p(&[1.0, 3.0, 3.0], SamplingParams::greedy()), vec![0.0, 1.0, 0.0]);
    assert_eq!(argmax(&[f32::NEG_INFINITY, -5.0, -5.0]).unwrap(), 1);
}

#[test]
fn top_k_keeps_ties_with_kth_value() {
    let probs = p(&[1.0, 1.0, 1.0, 0.0], SamplingParams { top_k: 1, ..Default::default() });
    for &x in &probs[..3] {
        assert!((x - 1.0 / 3.0).abs() < 1e-7);
    }
    assert_eq!(probs[3], 0.0);
    let probs = p(&[0.0, 2.0, 1.0, 3.0], SamplingParams { top_k: 2, ..Default::default() });
    assert_eq!((probs[0], probs[2]), (0.0, 0.0));
    assert!((probs[3] - 1.0 / (1.0 + (-1.0f32).exp())).abs() < 1e-6);
}

#[test]
fn top_p_keeps_smallest_prefix_reaching_p() {
    // π = (0.5, 0.25, 0.125, 0.125) via logits ln π.
    let l = [0.5f32.ln(), 0.25f32.ln(), 0.125f32.ln(), 0.125f32.ln()];
    // 0.5 reaches 0.5 exactly: one token.
    let probs = p(&l, SamplingParams { top_p: 0.5, ..Default::default() });
    assert_eq!(probs, vec![1.0, 0.0, 0.0, 0.0]);
    // 0.6 needs two tokens.
    let probs = p(&l, SamplingParams { top_p: 0.6, ..Default::default() });
    assert!((probs[0] - 2.0 / 3.0).abs() < 1e-6 && (probs[1] - 1.0 / 3.0).abs() < 1e-6 && probs[2] == 0.0);
    // 0.8 needs three; of the tied pair the lower id is kept.
    let probs = p(&l, SamplingParams { top_p: 0.8, ..Default::default() });
    assert!(probs[2] > 0.0 && probs[3] == 0.0);
    // Uniform row: ties broken by ascending id.
    let probs = p(&[0.0; 4], SamplingParams { top_p: 0.5, ..Default::default() });
    assert_eq!(probs, vec![0.5, 0.5, 0.0, 0.0]);
    // top_p >= 1 is off.
    let probs = p(&l, SamplingParams { top_p: 1.0, ..Default::default() });
    assert!(probs.iter().all(|&x| x > 0.0));
}

#[test]
fn specexec_inverted_top_p_is_reproduced_only_on_request() {
    // Top token p = 0.5 > 0.1: SpecExec's filter with top_p = 0.9 changes nothing.
    let l = [0.5f32.ln(), 0.25f32.ln(), 0.125f32.ln(), 0.125f32.ln()];
    let inv = p(&l, SamplingParams { top_p: 0.9, nucleus: NucleusMode::ReferenceInverted, ..Default::default() });
    assert!(close(&inv, &[0.5, 0.25, 0.125, 0.125]));
    // The standard filter drops the last token (0.5 + 0.25 + 0.125 = 0.875 < 0.9 needs all... so use 0.8).
    let std = p(&l, SamplingParams { top_p: 0.8, ..Default::default() });
    assert_eq!(std[3], 0.0);
    // Inverted with top_p = 0.4: removes the head while its mass <= 0.6, i.e. token 0 (0.5), keeps the tail.
    let inv = p(&l, SamplingParams { top_p: 0.4, nucleus: NucleusMode::ReferenceInverted, ..Default::default() });
    assert!(close(&inv, &[0.0, 0.5, 0.25, 0.25]));
}

#[test]
fn min_p_threshold_relative_to_max() {
    let l = [0.0f32, 0.5f32.ln(), 0.2f32.ln(), f32::NEG_INFINITY];
    let probs = p(&l, SamplingParams { min_p: 0.3, ..Default::default() });
    assert!(close(&probs, &[2.0 / 3.0, 1.0 / 3.0, 0.0, 0.0]));
}

#[test]
fn penalties_ctrl_presence_frequency_and_window() {
    let params = SamplingParams { repetition_penalty: 2.0, temperature: 0.0, ..Default::default() };
    let mut proc = LogitsProcessor::new();
    // Token 0: 2 → 1 (divided), token 1: −2 → −4 (multiplied), token 2 untouched: argmax becomes 2? 1 vs 1.5.
    let mut out = Vec::new();
    proc.process_into(&[2.0, -2.0, 1.5], &params, &[0, 1, 0], &mut out).unwrap();
    assert_eq!(out, vec![0.0, 0.0, 1.0]);
    // Reference agrees on the penalised logits.
    let z = reference::apply_penalties(&[2.0, -2.0, 1.5], &[0, 1, 0], &params);
    assert_eq!(z, vec![1.0, -4.0, 1.5]);
    // Frequency 0.5 counts occurrences, presence 1 once: token 0 seen twice → 2 − 1 − 1 = 0.
    let params = SamplingParams { frequency_penalty: 0.5, presence_penalty: 1.0, ..Default::default() };
    assert_eq!(reference::apply_penalties(&[2.0, 0.0], &[0, 0], &params), vec![0.0, 0.0]);
    let probs = process_logits(&[2.0, 0.0], &params, &[0, 0]).unwrap();
    assert!(close(&probs, &[0.5, 0.5]));
    // Window of 1: only the last token (1) is penalised.
    let params = SamplingParams { presence_penalty: 10.0, penalty_window: Some(1), ..Default::default() };
    let probs = process_logits(&[0.0, 0.0], &params, &[0, 1]).unwrap();
    assert!(probs[0] > 0.99);
    // Window 0 disables the penalties.
    let params = SamplingParams { presence_penalty: 10.0, penalty_window: Some(0), ..Default::default() };
    assert!(close(&process_logits(&[0.0, 0.0], &params, &[0, 1]).unwrap(), &[0.5, 0.5]));
}

#[test]
fn temperature_order_switch() {
    // Logits (0, −1, −2): at T = 1 the top-p = 0.7 nucleus is {0, 1}; at T = 0.5 token 0 alone has 0.867.
    let l = [0.0f32, -1.0, -2.0];
    let first = p(&l, SamplingParams { temperature: 0.5, top_p: 0.7, ..Default::default() });
    assert_eq!(first, vec![1.0, 0.0, 0.0]);
    let last = p(
        &l,
        SamplingParams { temperature: 0.5, top_p: 0.7, order: FilterOrder::TemperatureLast, ..Default::default() },
    );
    let e = (-2.0f64).exp();
    assert!(close(&last, &[1.0 / (1.0 + e), e / (1.0 + e), 0.0]));
}

#[test]
fn tiny_and_huge_temperatures_stay_finite() {
    let l = [1.0f32, 0.999, -3.0];
    let probs = p(&l, SamplingParams { temperature: 1e-30, ..Default::default() });
    assert_eq!(probs, vec![1.0, 0.0, 0.0]);
    let probs = p(&l, SamplingParams { temperature: 1e30, ..Default::default() });
    assert!(close(&probs, &[1.0 / 3.0; 3]));
    let probs = p(&[3e38, -3e38], SamplingParams::default());
    assert_eq!(probs, vec![1.0, 0.0]);
}

#[test]
fn large_vocab_partial_selection_matches_reference() {
    // V = 20000 forces several rounds of the partial selection (64, 256, 1024, 4096, ...).
    let rng = effllm_tensor::rng::CounterRng::new(11, 3);
    let logits: Vec<f32> = (0..20_000).map(|i| (3.0 * rng.normal_at(i)) as f32).collect();
    for &top_p in &[0.3f32, 0.9, 0.99, 0.9999] {
        for &top_k in &[0usize, 100, 5000] {
            for &order in &[FilterOrder::TemperatureFirst, FilterOrder::TemperatureLast] {
                for &nucleus in &[NucleusMode::Standard, NucleusMode::ReferenceInverted] {
                    let params =
                        SamplingParams { temperature: 0.8, top_p, top_k, order, nucleus, ..Default::default() };
                    let got = process_logits(&logits, &params, &[]).unwrap();
                    let want = reference::process(&logits, &params, &[]).unwrap();
                    let kept = got.iter().filter(|&&x| x > 0.0).count();
                    assert!(close(&got, &want), "top_p {top_p} top_k {top_k} {order:?} {nucleus:?} kept {kept}");
                    for (g, w) in got.iter().zip(&want) {
                        assert_eq!(*g == 0.0, *w == 0.0);
                    }
                }
            }
        }
    }
}

#[test]
fn errors_are_typed() {
    let d = SamplingParams::default();
    assert_eq!(process_logits(&[], &d, &[]), Err(SamplingError::Empty { what: "logits" }));
    assert!(matches!(process_logits(&[0.0, f32::NAN], &d, &[]), Err(SamplingError::NonFiniteLogit { index: 1, .. })));
    assert!(matches!(
        process_logits(&[f32::INFINITY, 0.0], &d, &[]),
        Err(SamplingError::NonFiniteLogit { index: 0, .. })
    ));
    assert_eq!(process_logits(&[f32::NEG_INFINITY; 3], &d, &[]), Err(SamplingError::AllMasked));
    assert_eq!(process_logits(&[f32::NEG_INFINITY; 3], &SamplingParams::greedy(), &[]), Err(SamplingError::AllMasked));
    assert!(matches!(
        process_logits(&[0.0, 1.0], &d, &[2]),
        Err(SamplingError::TokenOutOfRange { token: 2, vocab: 2, .. })
    ));
    // Also on the greedy fast path, where no penalty reads the history.
    let mut s = Sampler::new(SamplingParams::greedy()).unwrap();
    assert!(matches!(s.sample(&[0.0, 1.0], &[5]), Err(SamplingError::TokenOutOfRange { token: 5, .. })));
    // An invalid row consumes no draw.
    let mut s = Sampler::new(d.clone()).unwrap();
    assert!(s.sample_probs(&[f32::NAN]).is_err());
    assert_eq!(s.position(), 0);
    let bad = [
        ("temperature", SamplingParams { temperature: -1.0, ..d.clone() }),
        ("temperature", SamplingParams { temperature: f32::NAN, ..d.clone() }),
        ("temperature", SamplingParams { temperature: f32::INFINITY, ..d.clone() }),
        ("top_p", SamplingParams { top_p: 0.0, ..d.clone() }),
        ("top_p", SamplingParams { top_p: f32::NAN, ..d.clone() }),
        ("min_p", SamplingParams { min_p: 1.5, ..d.clone() }),
        ("min_p", SamplingParams { min_p: -0.1, ..d.clone() }),
        ("repetition_penalty", SamplingParams { repetition_penalty: 0.0, ..d.clone() }),
        ("presence_penalty", SamplingParams { presence_penalty: f32::NAN, ..d.clone() }),
        ("frequency_penalty", SamplingParams { frequency_penalty: f32::INFINITY, ..d.clone() }),
    ];
    for (name, params) in bad {
        match process_logits(&[0.0, 1.0], &params, &[]) {
            Err(SamplingError::InvalidParam { name: n, .. }) => assert_eq!(n, name),
            other => panic!("{name}: {other:?}"),
        }
        assert!(Sampler::new(params).is_err());
    }
    assert!(matches!(sample_from_probs(&[0.5, -0.1], 0.1), Err(SamplingError::InvalidProbability { index: 1, .. })));
    assert!(matches!(sample_from_probs(&[0.0, 0.0], 0.1), Err(SamplingError::ZeroMass { .. })));
    assert!(matches!(sample_from_probs(&[1.0], 1.0), Err(SamplingError::InvalidUniform { .. })));
    assert!(matches!(sample_from_probs(&[], 0.5), Err(SamplingError::Empty { .. })));
    assert!(matches!(argmax(&[f32::NAN]), Err(SamplingError::NonFiniteLogit { .. })));
}

#[test]
fn sampler_is_deterministic_and_replayable() {
    let params = SamplingParams { temperature: 0.9, top_k: 5, seed: 1234, ..Default::default() };
    let logits: Vec<f32> = (0..10).map(|i| (i as f32 * 0.7).sin()).collect();
    let run = |params: &SamplingParams| {
        let mut s = Sampler::new(params.clone()).unwrap();
        (0..200).map(|_| s.sample(&logits, &[]).unwrap()).collect::<Vec<Token>>()
    };
    let a = run(&params);
    assert_eq!(a, run(&params));
    assert_ne!(a, run(&SamplingParams { seed: 1235, ..params.clone() }));
    // Each sample consumes exactly one draw; seeking back replays.
    let mut s = Sampler::new(params.clone()).unwrap();
    for _ in 0..50 {
        s.sample(&logits, &[]).unwrap();
    }
    assert_eq!(s.position(), 50);
    s.seek(20);
    let replay: Vec<Token> = (0..30).map(|_| s.sample(&logits, &[]).unwrap()).collect();
    assert_eq!(&replay[..], &a[20..50]);
    // Draw n is CounterRng::new(seed, 0).uniform_f64_at(n).
    let mut u = SeededUniforms::new(1234, 0);
    u.seek(7);
    assert_eq!(u.next_uniform().unwrap(), effllm_tensor::rng::CounterRng::new(1234, 0).uniform_f64_at(7));
    // Another stream of the same seed differs.
    let mut s2 = Sampler::with_stream(params, 1).unwrap();
    let b: Vec<Token> = (0..200).map(|_| s2.sample(&logits, &[]).unwrap()).collect();
    assert_ne!(a, b);
}

// ---------------------------------------------------------------------------------------------------------------
// Property tests against the f64 reference.

fn logits_strategy() -> impl Strategy<Value = Vec<f32>> {
    (1usize..=48).prop_flat_map(|v| {
        prop_oneof![
            // Continuous logits, some masked.
            proptest::collection::vec((-8.0f32..8.0, 0.0f64..1.0), v)
                .prop_map(|xs| xs.into_iter().map(|(x, m)| if m < 0.1 { f32::NEG_INFINITY } else { x }).collect()),
            // A coarse grid: many exact ties.
            proptest::collection::vec((-6i32..=6).prop_map(|k| k as f32 * 0.5), v),
        ]
        .prop_map(|mut l: Vec<f32>| {
            if l.iter().all(|&x| x == f32::NEG_INFINITY) {
                l[0] = 0.25; // never all masked
            }
            l
        })
    })
}

fn params_strategy() -> impl Strategy<Value = SamplingParams> {
    let t = prop_oneof![1 => Just(0.0f32), 1 => Just(1.0f32), 4 => 0.05f32..3.0];
    let k = prop_oneof![2 => Just(0usize), 1 => 1usize..50];
    let top_p = prop_oneof![1 => Just(1.0f32), 2 => 0.05f32..1.0];
    let min_p = prop_oneof![2 => Just(0.0f32), 1 => 0.0f32..0.8];
    let rep = prop_oneof![2 => Just(1.0f32), 1 => 0.5f32..2.5];
    let add = prop_oneof![2 => Just((0.0f32, 0.0f32)), 1 => (-1.0f32..1.0, -1.0f32..1.0)];
    let window = prop_oneof![Just(None), (0usize..8).prop_map(Some)];
    let order = prop_oneof![Just(FilterOrder::TemperatureFirst), Just(FilterOrder::TemperatureLast)];
    let nucleus = prop_oneof![3 => Just(NucleusMode::Standard), 1 => Just(NucleusMode::ReferenceInverted)];
    ((t, k, top_p, min_p), (rep, add, window), (order, nucleus)).prop_map(
        |(
            (temperature, top_k, top_p, min_p),
            (repetition_penalty, (presence_penalty, frequency_penalty), penalty_window),
            (order, nucleus),
        )| {
            SamplingParams {
                temperature,
                top_k,
                top_p,
                min_p,
                repetition_penalty,
                presence_penalty,
                frequency_penalty,
                penalty_window,
                order,
                nucleus,
                seed: 0,
            }
        },
    )
}

fn case_strategy() -> impl Strategy<Value = (Vec<f32>, SamplingParams, Vec<Token>)> {
    (logits_strategy(), params_strategy()).prop_flat_map(|(l, params)| {
        let v = l.len() as u32;
        (Just(l), Just(params), proptest::collection::vec(0..v, 0..16))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn processed_distribution_matches_reference((logits, params, history) in case_strategy()) {
        let margin = reference::decision_margin(&logits, &params, &history);
        prop_assume!(margin > 1e-6);
        let got = process_logits(&logits, &params, &history).unwrap();
        let want = reference::process(&logits, &params, &history).unwrap();
        prop_assert!(close(&got, &want), "got {got:?}\nwant {want:?}");
        for (g, w) in got.iter().zip(&want) {
            // A filtered token is exactly 0; a kept one is 0 only through underflow.
            prop_assert!(*w != 0.0 || *g == 0.0);
            prop_assert!(*g != 0.0 || *w < 1e-30);
        }
    }

    #[test]
    fn mid_size_vocab_matches_reference(
        (logits, params) in (65usize..3000).prop_flat_map(|v| (
            proptest::collection::vec(-10.0f32..10.0, v),
            (0.1f32..2.0, prop_oneof![Just(0usize), 1usize..4000], 0.05f32..1.0, prop_oneof![Just(0.0f32), 0.0f32..0.3],
             any::<bool>(), any::<bool>()),
        ))
    ) {
        // Several rounds of the partial selection (64, 256, 1024, 4096 candidates).
        let (temperature, top_k, top_p, min_p, last, inverted) = params;
        let params = SamplingParams {
            temperature, top_k, top_p, min_p,
            order: if last { FilterOrder::TemperatureLast } else { FilterOrder::TemperatureFirst },
            nucleus: if inverted { NucleusMode::ReferenceInverted } else { NucleusMode::Standard },
            ..Default::default()
        };
        prop_assume!(reference::decision_margin(&logits, &params, &[]) > 1e-6);
        let got = process_logits(&logits, &params, &[]).unwrap();
        let want = reference::process(&logits, &params, &[]).unwrap();
        prop_assert!(close(&got, &want));
        for (g, w) in got.iter().zip(&want) {
            prop_assert!(*w != 0.0 || *g == 0.0);
        }
    }

    #[test]
    fn processed_distribution_invariants((logits, params, history) in case_strategy()) {
        let got = process_logits(&logits, &params, &history).unwrap();
        let sum: f64 = got.iter().map(|&x| x as f64).sum();
        prop_assert!((sum - 1.0).abs() < 1e-5, "sum {sum}");
        prop_assert!(got.iter().all(|&x| (0.0..=1.0).contains(&x)));
        // The argmax of the penalised logits is always kept and is the most probable token.
        let z = reference::apply_penalties(&logits.iter().map(|&x| x as f64).collect::<Vec<_>>(), &history, &params);
        prop_assume!(reference::decision_margin(&logits, &params, &history) > 1e-6);
        let top = reference::argmax(&z);
        // (SpecExec's inverted nucleus may drop the most probable tokens: that is its bug.)
        prop_assume!(params.top_p >= 1.0 || params.nucleus == NucleusMode::Standard);
        prop_assert!(got[top] > 0.0);
        prop_assert!(got.iter().all(|&x| x <= got[top]));
        if params.is_greedy() {
            prop_assert_eq!(got.iter().filter(|&&x| x == 1.0).count(), 1);
            prop_assert_eq!(got[top], 1.0);
        }
    }

    #[test]
    fn standard_nucleus_is_smallest_prefix(logits in logits_strategy(), top_p in 0.05f32..1.0, t in 0.2f32..2.0) {
        let params = SamplingParams { temperature: t, top_p, ..Default::default() };
        prop_assume!(reference::decision_margin(&logits, &params, &[]) > 1e-6);
        let full = reference::process(&logits, &SamplingParams { temperature: t, ..Default::default() }, &[]).unwrap();
        let got = process_logits(&logits, &params, &[]).unwrap();
        let kept: Vec<usize> = (0..logits.len()).filter(|&i| got[i] > 0.0).collect();
        let mass: f64 = kept.iter().map(|&i| full[i]).sum();
        prop_assert!(mass >= top_p as f64 - 1e-9);
        // Dropping the least probable kept token (largest id among the ties) falls below top_p.
        let last = *kept.iter().min_by(|&&a, &&b| full[a].partial_cmp(&full[b]).unwrap().then(b.cmp(&a))).unwrap();
        prop_assert!(mass - full[last] < top_p as f64 + 1e-9);
    }

    #[test]
    fn inverted_nucleus_is_noop_when_top_token_above_tenth(logits in logits_strategy(), t in 0.2f32..2.0) {
        let plain = SamplingParams { temperature: t, ..Default::default() };
        let inv = SamplingParams { top_p: 0.9, nucleus: NucleusMode::ReferenceInverted, ..plain.clone() };
        let full = process_logits(&logits, &plain, &[]).unwrap();
        let max = full.iter().copied().fold(0.0f32, f32::max);
        prop_assume!(max > 0.1 + 1e-6);
        prop_assert_eq!(process_logits(&logits, &inv, &[]).unwrap(), full);
    }

    #[test]
    fn inverse_cdf_matches_reference(w in proptest::collection::vec(prop_oneof![Just(0.0f32), 0.0f32..1.0], 1..40), u in 0.0f64..1.0) {
        prop_assume!(w.iter().any(|&x| x > 0.0));
        let wf: Vec<f64> = w.iter().map(|&x| x as f64).collect();
        let total: f64 = wf.iter().sum();
        let mut cum = 0.0;
        for &x in &wf { cum += x; prop_assume!((cum - u * total).abs() > 1e-12 * total); }
        let got = sample_from_probs(&w, u).unwrap() as usize;
        prop_assert_eq!(got, reference::sample_index(&wf, u));
        prop_assert!(w[got] > 0.0);
    }

    #[test]
    fn arbitrary_inputs_never_panic(
        logits in proptest::collection::vec(any::<f32>(), 0..24),
        t in any::<f32>(), top_p in any::<f32>(), min_p in any::<f32>(), rep in any::<f32>(), k in any::<usize>(),
        pres in any::<f32>(), freq in any::<f32>(),
        history in proptest::collection::vec(any::<u32>(), 0..8),
    ) {
        let params = SamplingParams {
            temperature: t, top_k: k, top_p, min_p, repetition_penalty: rep, presence_penalty: pres,
            frequency_penalty: freq, ..Default::default()
        };
        if let Ok(probs) = process_logits(&logits, &params, &history) {
            let sum: f64 = probs.iter().map(|&x| x as f64).sum();
            prop_assert!((sum - 1.0).abs() < 1e-5);
            prop_assert!(probs.iter().all(|x| x.is_finite() && *x >= 0.0));
        }
        let _ = reference::process(&logits, &params, &history);
        if let Ok(mut s) = Sampler::new(params)
            && let Ok(t) = s.sample(&logits, &history)
        {
            prop_assert!((t as usize) < logits.len());
        }
    }
}
