//! The roofline ceilings as a criterion group: f32 FMA throughput and memory copy / read bandwidth on all threads
//! of effllm's pool (the same kernels `bench-all` reports against).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use effllm_benches::ceiling::{self, MemBuffers};

fn ceilings(c: &mut Criterion) {
    let threads = effllm_tensor::threads::num_threads();
    let mut g = c.benchmark_group("ceiling");
    let iters = 1 << 18;
    g.throughput(Throughput::Elements(ceiling::fma_flops_per_thread(iters) * threads as u64));
    g.bench_function(format!("fma_f32/{threads}t"), |b| b.iter(|| ceiling::fma_parallel(iters)));

    let mut bufs = MemBuffers::new(MemBuffers::DEFAULT_BYTES);
    let mib = bufs.bytes() >> 20;
    g.sample_size(10);
    g.throughput(Throughput::BytesDecimal(2 * bufs.bytes() as u64));
    g.bench_function(format!("copy_{mib}MiB/{threads}t"), |b| b.iter(|| bufs.copy()));
    g.throughput(Throughput::BytesDecimal(bufs.bytes() as u64));
    g.bench_function(format!("read_{mib}MiB/{threads}t"), |b| b.iter(|| bufs.read()));
    g.finish();
}

criterion_group!(benches, ceilings);
criterion_main!(benches);
