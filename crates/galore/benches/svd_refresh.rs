//! Cost of GaLore's basis refresh and of one projected step, per weight shape of SmolLM2-135M (d = 576, FFN 1536,
//! 3 KV heads of 64) at rank d/4 = 144: exact f32 SVD (faer, the reference's choice), randomized SVD (oversample 8,
//! 2 power iterations), and project + back-project (the per-step matmuls). A refresh every T = 200 steps costs
//! `svd / 200` per step, amortised.
//!
//! `cargo bench -p galore --bench svd_refresh`

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use effllm_tensor::rng::CounterRng;
use effllm_tensor::{DType, Device, Tensor};
use galore::{BasisSource, ExactSvd, GaLoreParams, GaLoreProjector, ParamKey, ProjType, RandomizedSvd};
use std::hint::black_box;
use std::time::Duration;

const SHAPES: [(&str, usize, usize); 4] = [
    ("wq/wo 576x576", 576, 576),
    ("wk/wv 192x576", 192, 576),
    ("gate/up 1536x576", 1536, 576),
    ("down 576x1536", 576, 1536),
];
const RANK: usize = 144;

fn grad(m: usize, n: usize) -> Tensor {
    Tensor::randn(&[m, n], DType::F32, &Device::Cpu, &CounterRng::new(1, 0), 0, 0.0, 1.0).unwrap()
}

fn refreshed(g: &Tensor, source: &mut dyn BasisSource) -> GaLoreProjector {
    let params =
        GaLoreParams { rank: RANK, update_proj_gap: 200, scale: 0.25, proj_type: ProjType::Std, matrix_shape: None };
    let mut proj = GaLoreProjector::new(params, g.shape()).unwrap();
    proj.refresh(g, ParamKey::standalone(), 0, source).unwrap();
    proj
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("galore_refresh");
    group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    for (name, m, n) in SHAPES {
        let g = grad(m, n);
        group.bench_with_input(BenchmarkId::new("exact_svd", name), &g, |b, g| {
            b.iter(|| black_box(refreshed(g, &mut ExactSvd)))
        });
        group.bench_with_input(BenchmarkId::new("randomized_svd", name), &g, |b, g| {
            b.iter(|| black_box(refreshed(g, &mut RandomizedSvd::default())))
        });
        let proj = refreshed(&g, &mut ExactSvd);
        group.bench_with_input(BenchmarkId::new("project_and_back", name), &g, |b, g| {
            b.iter(|| black_box(proj.project_back(&proj.project_current(g).unwrap()).unwrap()))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
