//! GPU benchmarks of effllm-tensor, each beside a ceiling measured in the same run:
//! - GEMM 4096² (f32, TF32, bf16) through `Tensor::matmul` vs the same `cublasGemmEx` call on preallocated buffers;
//! - softmax, RMSNorm, SiLU, add over large buffers vs a device-to-device copy (bytes read + written);
//! - quantized GEMV (Q4_1, Q8_0) at SmolLM2's shapes vs the same copy bandwidth, and beside a plain read of the same
//!   bytes (one launch of 16-byte loads: the ceiling of a single call at that size).
//!
//! Run on a GPU machine: `cargo run --release --features cuda --example cuda_bench` (`-- qgemv [ROWS]`: only the
//! quantized GEMVs, of ROWS output rows if given).

use std::time::Instant;

use cudarc::cublas::CudaBlas;
use cudarc::cublas::sys::{cublasComputeType_t as C, cublasGemmAlgo_t, cublasOperation_t, cudaDataType as D};
use cudarc::driver::{CudaContext, DevicePtr, DevicePtrMut};
use effllm_tensor::cuda::{Arg, CustomKernel, KERNEL_PRELUDE, LaunchDims, Param};
use effllm_tensor::quant::{ActivationQuant, QMatrix, QWeight, QuantType};
use effllm_tensor::rng::CounterRng;
use effllm_tensor::{DType, Device, Tensor};

const GPU: Device = Device::Cuda(0);

/// Waits for all work on the GPU: effllm's compute stream and the stream of the ceiling measurements (the backend
/// computes on a stream of its own, so synchronising one does not wait for the other).
fn sync() {
    effllm_tensor::cuda::device(0).unwrap().synchronize().unwrap();
    CudaContext::new(0).unwrap().synchronize().unwrap();
}

/// Median over 5 rounds of the mean time of `iters` back-to-back calls (one sync per round).
fn time(iters: usize, mut f: impl FnMut()) -> f64 {
    f();
    sync();
    let mut rounds: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..iters {
                f();
            }
            sync();
            t.elapsed().as_secs_f64() / iters as f64
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    rounds[2]
}

/// The read ceiling of a quantized GEMV at its own size: every byte of W read once with 16-byte loads (four in flight
/// per thread, a grid of 8 CTAs per SM), one launch per call like the GEMV's. A GEMV cannot read W faster than this;
/// at the layer shapes both are bound by the launch, not by DRAM. Launched plainly, or as a programmatic dependent
/// launch like the tile-layout GEMV (its loads then overlap the previous call's tail; it waits before its write).
const READ_ONCE: &str = r#"
extern "C" __global__ void __launch_bounds__(256) read_once(const u8* w, float* sink, int n16) {
    const uint4* p = (const uint4*)w;
    u32 acc = 0;
    effllm_allow_next_kernel();
    const int stride = gridDim.x * blockDim.x;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n16; i += 4 * stride) {
        uint4 v[4];
        #pragma unroll
        for (int u = 0; u < 4; ++u) v[u] = i + u * stride < n16 ? __ldg(p + i + u * stride) : make_uint4(0, 0, 0, 0);
        #pragma unroll
        for (int u = 0; u < 4; ++u) acc ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
    }
    effllm_wait_for_previous_kernel();
    if (acc == 0x9e3779b9u) sink[0] = (float)acc;  // keeps the loads
}
"#;

fn randn(shape: &[usize], dtype: DType, seed: u64) -> Tensor {
    Tensor::randn(shape, dtype, &GPU, &CounterRng::new(seed, 0), 0, 0.0, 1.0).unwrap()
}

fn main() {
    let dev = effllm_tensor::cuda::device(0).expect("a CUDA device");
    println!("# effllm-tensor on {} ({})\n", dev.name(), dev.arch());

    // ---- copy ceiling: device-to-device, bytes read + written.
    let ctx = CudaContext::new(0).unwrap();
    let stream = ctx.default_stream();
    let n_copy = 1usize << 28; // 1 GiB of f32
    let src = stream.alloc_zeros::<f32>(n_copy).unwrap();
    let mut dst = stream.alloc_zeros::<f32>(n_copy).unwrap();
    let t = time(10, || stream.memcpy_dtod(&src, &mut dst).unwrap());
    stream.synchronize().unwrap();
    let copy_bw = 2.0 * (n_copy * 4) as f64 / t / 1e9;
    println!("| ceiling | value |\n|---|---:|\n| device-to-device copy | {copy_bw:.0} GB/s |");

    // `cuda_bench qgemv [ROWS]`: only the quantized GEMVs (of ROWS output rows), e.g. under a profiler.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let only_qgemv = args.first().is_some_and(|a| a == "qgemv");
    let rows_filter: Option<usize> = args.get(1).and_then(|a| a.parse().ok());
    if !only_qgemv {
        // ---- GEMM 4096²: our matmul vs raw cublasGemmEx on preallocated buffers.
        let nn = 4096usize;
        let flops = 2.0 * (nn * nn * nn) as f64;
        let blas = CudaBlas::new(stream.clone()).unwrap();
        let mut rows = Vec::new();
        for (name, dtype, tf32) in
            [("f32", DType::F32, false), ("TF32", DType::F32, true), ("bf16", DType::BF16, false)]
        {
            effllm_tensor::cuda::set_allow_tf32(tf32);
            let a = randn(&[nn, nn], dtype, 1);
            let b = randn(&[nn, nn], dtype, 2);
            let ours = time(10, || {
                let _ = a.matmul(&b).unwrap();
            });
            // The ceiling: the same cuBLAS call without the Tensor layer.
            let (dt, ct, esz) = match (dtype, tf32) {
                (DType::BF16, _) => (D::CUDA_R_16BF, C::CUBLAS_COMPUTE_32F, 2),
                (_, true) => (D::CUDA_R_32F, C::CUBLAS_COMPUTE_32F_FAST_TF32, 4),
                _ => (D::CUDA_R_32F, C::CUBLAS_COMPUTE_32F, 4),
            };
            let ra = stream.alloc_zeros::<u8>(nn * nn * esz).unwrap();
            let rb = stream.alloc_zeros::<u8>(nn * nn * esz).unwrap();
            let mut rc = stream.alloc_zeros::<u8>(nn * nn * esz).unwrap();
            // Random bytes would give NaN/denormals in bf16; fill through the Tensor API and copy.
            let fill_a = a.to_dtype(dtype).unwrap().to_vec_f64().unwrap();
            let host: Vec<u8> = match dtype {
                DType::BF16 => fill_a.iter().flat_map(|&v| half::bf16::from_f64(v).to_le_bytes()).collect(),
                _ => fill_a.iter().flat_map(|&v| (v as f32).to_le_bytes()).collect(),
            };
            let ra = {
                let mut r = ra;
                stream.memcpy_htod(&host, &mut r).unwrap();
                r
            };
            let rb = {
                let mut r = rb;
                stream.memcpy_htod(&host, &mut r).unwrap();
                r
            };
            let (alpha, beta) = (1.0f32, 0.0f32);
            let raw = time(10, || {
                let (pa, _g1) = ra.device_ptr(&stream);
                let (pb, _g2) = rb.device_ptr(&stream);
                let (pc, _g3) = rc.device_ptr_mut(&stream);
                unsafe {
                    cudarc::cublas::result::gemm_ex(
                        *blas.handle(),
                        cublasOperation_t::CUBLAS_OP_N,
                        cublasOperation_t::CUBLAS_OP_N,
                        nn as i32,
                        nn as i32,
                        nn as i32,
                        (&alpha as *const f32).cast(),
                        pb as *const _,
                        dt,
                        nn as i32,
                        pa as *const _,
                        dt,
                        nn as i32,
                        (&beta as *const f32).cast(),
                        pc as *mut _,
                        dt,
                        nn as i32,
                        ct,
                        cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT_TENSOR_OP,
                    )
                    .unwrap();
                }
            });
            rows.push(format!(
                "| GEMM 4096² {name} | {:.3} ms | {:.1} TFLOP/s | {:.1} TFLOP/s | {:.1}% |",
                ours * 1e3,
                flops / ours / 1e12,
                flops / raw / 1e12,
                100.0 * raw / ours
            ));
        }
        effllm_tensor::cuda::set_allow_tf32(false);
        println!("\n| op | time | ours | raw cuBLAS | ours / cuBLAS rate |\n|---|---:|---:|---:|---:|");
        for r in rows {
            println!("{r}");
        }

        // ---- memory-bound ops vs the copy ceiling (bytes: each input read once + output written once).
        println!("\n| op | shape | time | GB/s | % of copy |\n|---|---|---:|---:|---:|");
        let report = |name: &str, shape: &str, bytes: f64, t: f64| {
            println!(
                "| {name} | {shape} | {:.1} µs | {:.0} | {:.1}% |",
                t * 1e6,
                bytes / t / 1e9,
                100.0 * bytes / t / 1e9 / copy_bw
            );
        };
        let big = randn(&[4096, 16384], DType::F32, 3);
        let bytes = 2.0 * (4096 * 16384 * 4) as f64;
        report(
            "softmax (last dim)",
            "4096×16384 f32",
            bytes,
            time(20, || {
                let _ = big.softmax(1).unwrap();
            }),
        );
        let w = randn(&[16384], DType::F32, 4);
        report(
            "RMSNorm",
            "4096×16384 f32",
            bytes,
            time(20, || {
                let _ = big.rms_norm(&w, 1e-5).unwrap();
            }),
        );
        report(
            "SiLU",
            "4096×16384 f32",
            bytes,
            time(20, || {
                let _ = big.silu().unwrap();
            }),
        );
        let big2 = randn(&[4096, 16384], DType::F32, 5);
        report(
            "add",
            "4096×16384 f32",
            1.5 * bytes,
            time(20, || {
                let _ = big.add(&big2).unwrap();
            }),
        );
        let vocab = randn(&[64, 49152], DType::F32, 6);
        report(
            "softmax (vocab rows)",
            "64×49152 f32",
            2.0 * (64 * 49152 * 4) as f64,
            time(50, || {
                let _ = vocab.softmax(1).unwrap();
            }),
        );
    }

    // ---- quantized GEMV at SmolLM2's shapes (bytes of W per call). "resident": one W called again and again (the
    // H100/H200 L2 of 50-60 MB holds even the LM head); "streamed": the calls rotate over copies of W covering at
    // least 256 MiB, so W comes from DRAM as in a decode step, where a layer's weights are read once per token.
    println!(
        "\n| quantized GEMV | shape | resident | GB/s of W | % of copy | streamed (copies) | GB/s of W | % of copy | plain read of W, streamed | % of copy | GEMV / read | overlapping reads | % of copy |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    // The read ceiling at each size (one kernel, built once).
    let read_kernel = CustomKernel::new(
        "cuda_bench::read_once",
        &format!("{KERNEL_PRELUDE}{READ_ONCE}"),
        "read_once",
        &[Param::In(DType::U8), Param::Out(DType::F32), Param::I32],
    );
    let read_dims =
        LaunchDims { grid: (8 * dev.multiprocessor_count() as u32, 1, 1), block: (256, 1, 1), shared_mem_bytes: 0 };
    let mut sink = Tensor::zeros(&[1], DType::F32, &GPU).unwrap();
    // Activations f32 (exact) or quantised to Q8 per 32-block (`dp4a` kernels, llama.cpp's numerics); W in the ggml
    // rows or in the GEMV tile layout (`QWeight::with_gemv_layout`, f32 activations).
    for (ty, act, tiles) in [QuantType::Q4_1, QuantType::Q8_0].into_iter().flat_map(|ty| {
        [(ty, ActivationQuant::F32, false), (ty, ActivationQuant::F32, true), (ty, ActivationQuant::Q8, false)]
    }) {
        for (n, k) in [(576usize, 576usize), (1536, 576), (576, 1536), (49152, 576)] {
            if rows_filter.is_some_and(|r| r != n) {
                continue;
            }
            let wbytes = (n * k) as f64 * ty.bytes_per_weight();
            let copies = ((256.0 * 1024.0 * 1024.0 / wbytes).ceil() as usize).clamp(1, 256);
            // Each copy as a QWeight and as plain u8 bytes (for the read ceiling at this size).
            let (qs, raw): (Vec<QWeight>, Vec<Tensor>) = (0..copies)
                .map(|c| {
                    let wdata: Vec<f32> =
                        (0..n * k).map(|i| (((i + 31 * c) * 7919 % 1000) as f32 / 500.0) - 1.0).collect();
                    let q = QMatrix::quantize(ty, n, k, &wdata).unwrap();
                    let bytes = Tensor::from_slice(q.as_bytes(), &[q.nbytes()], &GPU).unwrap();
                    let w = QWeight::new(q).with_activation_quant(act).to_device(&GPU).unwrap();
                    (if tiles { w.with_gemv_layout().unwrap() } else { w }, bytes)
                })
                .unzip();
            let x = randn(&[1, k], DType::F32, 7);
            let n16 = raw[0].elem_count() / 16;
            let mut next_raw = 0;
            let read = time(copies.max(100), || {
                let mut a = [Arg::In(&raw[next_raw % copies]), Arg::Out(&mut sink), Arg::I32(n16 as i32)];
                read_kernel.launch(GPU, read_dims, &mut a, 0).unwrap();
                next_raw += 1;
            });
            let mut next_raw = 0;
            let read_overlapping = time(copies.max(100), || {
                let mut a = [Arg::In(&raw[next_raw % copies]), Arg::Out(&mut sink), Arg::I32(n16 as i32)];
                read_kernel.launch_overlapping(GPU, read_dims, &mut a, 0).unwrap();
                next_raw += 1;
            });
            drop(raw);
            let resident = time(100, || {
                let _ = x.linear_q(&qs[0]).unwrap();
            });
            let mut next = 0;
            let streamed = time(copies.max(100), || {
                let _ = x.linear_q(&qs[next % copies]).unwrap();
                next += 1;
            });
            let pct = |t: f64| 100.0 * wbytes / t / 1e9 / copy_bw;
            println!(
                "| {ty:?}, {act:?} acts{} | {n}×{k} | {:.1} µs | {:.0} | {:.1}% | {:.1} µs ({copies}) | {:.0} | {:.1}% | {:.1} µs | {:.1}% | {:.0}% | {:.1} µs | {:.1}% |",
                if tiles { ", tiles" } else { "" },
                resident * 1e6,
                wbytes / resident / 1e9,
                pct(resident),
                streamed * 1e6,
                wbytes / streamed / 1e9,
                pct(streamed),
                read * 1e6,
                pct(read),
                100.0 * read / streamed,
                read_overlapping * 1e6,
                pct(read_overlapping)
            );
        }
    }
}
