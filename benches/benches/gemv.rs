//! Decode GEMV at SmolLM2's shapes: f32, fused Q4_1 / Q8_0 (f32 and q8 activations) and dequantise-then-GEMV,
//! with W streamed from DRAM (rotating copies) and cache-resident. Throughput = bytes of W in its format.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use effllm_benches::inputs::{self, SMOLLM2_GEMV};
use effllm_benches::scenarios::Residency;
use effllm_benches::scenarios::tensor::{GemvVariant, gemv_case};

fn gemv(c: &mut Criterion) {
    for res in Residency::ALL {
        for s in &SMOLLM2_GEMV {
            let w = inputs::gemv_weights(s);
            let mut g = c.benchmark_group(format!("gemv_{}/{}", res.name(), s.label()));
            g.measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
            for v in GemvVariant::all(false) {
                let mut f = gemv_case(s, v, res, &w).expect("GEMV inputs");
                g.throughput(Throughput::BytesDecimal(v.weight_bytes(s) as u64));
                g.bench_function(BenchmarkId::from_parameter(v.label().replace([' ', ','], "_")), |b| b.iter(&mut f));
            }
            g.finish();
        }
    }
}

criterion_group!(benches, gemv);
criterion_main!(benches);
