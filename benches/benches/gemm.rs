//! f32 square GEMM through `Tensor::matmul` (faer), n = 64..2048; throughput in FLOPs (2n³).

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use effllm_benches::inputs;

fn gemm(c: &mut Criterion) {
    let mut g = c.benchmark_group("gemm_f32");
    for n in inputs::GEMM_SIZES {
        let (a, b) = inputs::gemm_operands(n);
        if n >= 1024 {
            g.sample_size(10).measurement_time(Duration::from_secs(8));
        }
        g.throughput(Throughput::Elements(2 * (n as u64).pow(3)));
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |bench, _| {
            bench.iter(|| black_box(a.matmul(&b).expect("square matmul")))
        });
    }
    g.finish();
}

criterion_group!(benches, gemm);
criterion_main!(benches);
