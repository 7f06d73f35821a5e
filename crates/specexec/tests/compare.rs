//! The wall-clock comparison (`compare::compare_with_autoregressive`, what the offloaded example and `bench-all`
//! report): one row per method in order, equal token counts, consistent step counts, typed errors for bad input.

use effllm_sampling::SamplingParams;
use specexec::SpecError;
use specexec::compare::{ComparedMethod, ComparisonConfig, compare_with_autoregressive};
use specexec::models::LookupLm;

#[test]
fn rows_cover_every_method_with_the_same_token_counts() {
    let target = LookupLm::new(12, 2, 5, 2.5);
    let draft = target.perturbed(6, 0.4);
    let prompts = vec![vec![3, 1, 4], vec![1, 5, 9, 2]];
    let cfg = ComparisonConfig::new(20, &[1, 8, 32]);
    for params in
        [SamplingParams::greedy(), SamplingParams { temperature: 0.6, top_p: 0.9, seed: 3, ..Default::default() }]
    {
        let mut heard = Vec::new();
        let rows = compare_with_autoregressive(&draft, &target, &prompts, &params, &cfg, |m| heard.push(m.to_string()))
            .unwrap();
        let methods: Vec<ComparedMethod> = rows.iter().map(|r| r.method).collect();
        assert_eq!(
            methods,
            [
                ComparedMethod::Autoregressive,
                ComparedMethod::SpecExec { budget: 1 },
                ComparedMethod::SpecExec { budget: 8 },
                ComparedMethod::SpecExec { budget: 32 }
            ]
        );
        // Warm-up first, then one line per method.
        assert_eq!(heard.len(), 5);
        assert_eq!(heard[1], "autoregressive");
        assert_eq!(heard[4], "SpecExec K=32");
        for r in &rows {
            assert_eq!(r.tokens, 40, "{:?}", r.method);
            assert!(r.target_steps >= 1 && r.target_steps <= 40);
            assert!(r.wall_s >= 0.0 && r.target_s >= 0.0 && r.draft_s >= 0.0);
        }
        assert_eq!(rows[0].target_steps, 40);
        assert_eq!(rows[0].tokens_per_step(), 1.0);
        assert_eq!(rows[0].draft_s, 0.0);
        // A budget of one node accepts at most one draft token per step.
        assert!(rows[1].tokens_per_step() <= 2.0);
        assert!(rows[3].tokens_per_step() > 1.0);
        if rows[0].wall_s > 0.0 {
            assert_eq!(rows[0].speedup_over(&rows[0]), 1.0);
        }
    }
}

#[test]
fn bad_comparisons_are_typed_errors() {
    let m = LookupLm::new(8, 2, 1, 1.0);
    let p = SamplingParams::greedy();
    let cfg = ComparisonConfig::new(4, &[4]);
    let e = compare_with_autoregressive(&m, &m, &[], &p, &cfg, |_| {}).unwrap_err();
    assert!(matches!(e, SpecError::InvalidConfig { name: "prompts", .. }), "{e}");
    let zero = ComparisonConfig { new_tokens: 0, ..cfg.clone() };
    let e = compare_with_autoregressive(&m, &m, &[vec![1]], &p, &zero, |_| {}).unwrap_err();
    assert!(matches!(e, SpecError::InvalidConfig { name: "new_tokens", .. }), "{e}");
    let e = compare_with_autoregressive(&m, &m, &[vec![1]], &p, &ComparisonConfig::new(4, &[0]), |_| {}).unwrap_err();
    assert!(matches!(e, SpecError::InvalidConfig { name: "budget", .. }), "{e}");
    let e = compare_with_autoregressive(&m, &m, &[vec![9]], &p, &cfg, |_| {}).unwrap_err();
    assert!(matches!(e, SpecError::TokenOutOfRange { token: 9, .. }), "{e}");
}
