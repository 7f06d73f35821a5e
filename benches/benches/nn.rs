//! Softmax, RMSNorm and decode attention. Softmax/RMSNorm throughput = bytes read + written; attention = bytes of
//! the K/V cache read.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use effllm_benches::inputs;
use effllm_benches::scenarios::Residency;
use effllm_benches::scenarios::tensor::{attention_case, attention_kv_bytes};

fn softmax(c: &mut Criterion) {
    let mut g = c.benchmark_group("softmax_f32");
    for shape in inputs::SOFTMAX_SHAPES {
        let x = inputs::softmax_input(shape);
        let dim = shape.len() - 1;
        let label = shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x");
        g.throughput(Throughput::BytesDecimal(8 * x.elem_count() as u64));
        g.bench_function(BenchmarkId::from_parameter(label), |b| {
            b.iter(|| black_box(x.softmax(dim).expect("softmax")))
        });
    }
    g.finish();
}

fn rms_norm(c: &mut Criterion) {
    let mut g = c.benchmark_group("rms_norm_f32");
    for rows in inputs::RMS_ROWS {
        let (x, w) = inputs::rms_inputs(rows);
        g.throughput(Throughput::BytesDecimal(8 * x.elem_count() as u64));
        g.bench_function(BenchmarkId::from_parameter(format!("{rows}x{}", inputs::RMS_DIM)), |b| {
            b.iter(|| black_box(x.rms_norm(&w, 1e-5).expect("rms_norm")))
        });
    }
    g.finish();
}

fn attention(c: &mut Criterion) {
    let mut g = c.benchmark_group("attention_decode_gqa9x3_d64");
    for res in Residency::ALL {
        for s in inputs::ATTN_KV_LENS {
            let mut f = attention_case(s, res).expect("attention inputs");
            g.throughput(Throughput::BytesDecimal(attention_kv_bytes(s) as u64));
            g.bench_function(BenchmarkId::new(res.name(), s), |b| b.iter(&mut f));
        }
    }
    g.finish();
}

criterion_group!(benches, softmax, rms_norm, attention);
criterion_main!(benches);
