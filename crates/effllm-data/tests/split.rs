//! The document split: determinism, partition, stability under corpus changes, proportions.

use effllm_data::{Book, Corpus, Document, Split, SplitConfig};
use proptest::prelude::*;

fn corpus(ids: &[String]) -> Corpus {
    Corpus::from_documents(ids.iter().map(|id| Document::new(id.clone(), Book::Book, "t", "text")).collect())
}

fn config() -> impl Strategy<Value = SplitConfig> {
    (any::<u64>(), 0u16..=500, 0u16..=500).prop_map(|(seed, validation_per_mille, test_per_mille)| SplitConfig {
        seed,
        validation_per_mille,
        test_per_mille,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn splits_are_a_deterministic_partition(ids in proptest::collection::btree_set("[a-z/._-]{1,24}", 0..60), cfg in config()) {
        let ids: Vec<String> = ids.into_iter().collect();
        let c = corpus(&ids);
        let parts: Vec<Vec<&str>> = Split::ALL.iter().map(|&s| c.split(s, &cfg).iter().map(|d| d.id.as_str()).collect()).collect();
        // Coverage and disjointness: every id in exactly one split.
        let mut all: Vec<&str> = parts.concat();
        all.sort_unstable();
        prop_assert_eq!(all, ids.iter().map(String::as_str).collect::<Vec<_>>());
        // Determinism, and agreement with `assign`.
        for (s, part) in Split::ALL.iter().zip(&parts) {
            prop_assert_eq!(part, &c.split(*s, &cfg).iter().map(|d| d.id.as_str()).collect::<Vec<_>>());
            for id in part {
                prop_assert_eq!(cfg.assign(id), *s);
            }
        }
    }

    #[test]
    fn adding_and_removing_documents_moves_no_other_document(
        ids in proptest::collection::btree_set("[a-z]{1,12}", 2..40),
        extra in proptest::collection::btree_set("[A-Z]{1,12}", 0..20),
        keep_mask in any::<u64>(),
        cfg in config(),
    ) {
        let ids: Vec<String> = ids.into_iter().collect();
        let base = corpus(&ids);
        let subset: Vec<String> = ids.iter().enumerate().filter(|(i, _)| keep_mask >> (i % 64) & 1 == 1).map(|(_, s)| s.clone()).collect();
        let changed = corpus(&subset.iter().cloned().chain(extra).collect::<Vec<_>>());
        for s in Split::ALL {
            for d in changed.split(s, &cfg) {
                if let Some(orig) = base.get(&d.id) {
                    prop_assert_eq!(cfg.assign(&orig.id), s);
                }
            }
        }
    }

    #[test]
    fn growing_the_test_share_only_moves_documents_into_test(id in "[a-z]{1,20}", seed in any::<u64>(), val in 0u16..400, t1 in 0u16..300, dt in 0u16..300) {
        let a = SplitConfig { seed, validation_per_mille: val, test_per_mille: t1 };
        let b = SplitConfig { test_per_mille: t1 + dt, ..a };
        if a.assign(&id) == Split::Test {
            prop_assert_eq!(b.assign(&id), Split::Test);
        }
    }
}

#[test]
fn proportions_match_the_configuration() {
    let cfg = SplitConfig::default();
    let n = 20_000;
    let mut counts = [0usize; 3];
    for i in 0..n {
        counts[cfg.assign(&format!("book/page-{i}.html")) as usize] += 1;
    }
    // 5% each: standard deviation sqrt(n p (1-p)) ≈ 31; allow 5 sigma.
    for (&c, want) in counts.iter().zip([18_000.0, 1_000.0, 1_000.0]) {
        assert!((c as f64 - want).abs() < 160.0, "counts {counts:?}");
    }
}

#[test]
fn seeds_give_different_splits() {
    let a = SplitConfig { seed: 1, ..SplitConfig::default() };
    let b = SplitConfig { seed: 2, ..SplitConfig::default() };
    let differ = (0..1000).filter(|i| a.assign(&i.to_string()) != b.assign(&i.to_string())).count();
    assert!(differ > 100, "{differ}");
}
