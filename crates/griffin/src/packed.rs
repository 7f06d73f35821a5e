//! [`PackedDown`]: the columns `E` of a block-quantized down projection, packed exactly.
//!
//! `W_down` is `[d, d_ff]` with its 32-element blocks running along `d_ff`, so the columns of the experts `E` cut
//! through blocks. Dequantizing them to f32 (what `Linear::select_cols` does) turns a 0.625-byte Q4_1 weight into
//! a 4-byte one and makes pruned decode slower than dense. Instead, for every row `r` and every original block `b`
//! that holds at least one expert, `PackedDown` keeps the block's own f16 scale `d_rb` and offset `m_rb`, and only
//! the 4-bit codes of the experts in `b`:
//!
//! ```text
//! y_r = Σ_{j ∈ E} (d_{r,b(j)} q_{rj} + m_{r,b(j)}) z_j = Σ_b  d_rb · Σ_{j ∈ E∩b} q_rj z_j  +  m_rb · Σ_{j ∈ E∩b} z_j
//! ```
//!
//! which is the dequantized value `d·q + m` of every kept weight exactly (Q4_0's `d·(q − 8)` is stored as
//! `m = −8d`, also exact), so the result equals the masked dense FFN up to f32 summation order. A Q4_1 row of
//! SmolLM2's down (`d_ff = 1536`, 48 blocks, 960 bytes) becomes `k/2 + 4·48` = 576 bytes at density 0.5, plus
//! half a byte for every odd-sized block segment (padded by one zero code): about 590 bytes, 62% of dense.
//!
//! # Layout
//!
//! Rows are packed in groups of 8 (the last group zero-padded). Each group is `group_bytes` long and, for each
//! non-empty block segment in order, holds 8 f16 scales `d` (one per row), 8 f16 offsets `m`, then one 8-byte
//! word per pair of expert slots: byte `i` of the word is row `i`'s code for the pair's first slot (low nibble) and
//! second slot (high nibble). The kernel keeps 8 rows in the 8 lanes of an AVX2 register: per pair it loads one
//! word, widens it to 8 × i32, splits the nibbles and does two FMAs with the broadcast activations; at the end of a
//! segment it adds `d·acc + m·Σz`. Groups run in parallel on effllm's pool, each output by one thread in a fixed
//! order (results do not depend on the thread count). A scalar kernel with the same layout is the fallback and the
//! oracle; on CUDA one thread computes one output row ([`KERNEL_SOURCE`]).

use std::sync::Arc;

use effllm_tensor::cuda::{Arg, CustomKernel, LaunchDims, Param};
use effllm_tensor::quant::{KernelPath, QMatrix, QuantType};
use effllm_tensor::{DType, Device, Tensor};
use half::f16;

use crate::error::{GriffinError, Result, invalid};

/// Marks a padding slot in [`PackedDown`]'s slot map.
const PAD: u32 = u32::MAX;
/// Rows per packed group (the AVX2 lane count).
const GROUP: usize = 8;
/// Groups per parallel task.
const GROUPS_PER_TASK: usize = 8;

/// One non-empty block segment: original block `block`, `npairs` code pairs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seg {
    block: usize,
    npairs: usize,
}

#[derive(Clone, Debug)]
struct DeviceCopy {
    bytes: Tensor,
    slot_src: Tensor,
    npairs: Tensor,
}

/// The expert columns of a Q4_0/Q4_1 down projection in the exact packed form described in the [module
/// docs](self). Built once per sequence and layer by [`PrunedFfn`](crate::PrunedFfn).
#[derive(Clone, Debug)]
pub struct PackedDown {
    ty: QuantType,
    rows: usize,
    k: usize,
    segs: Vec<Seg>,
    /// For each padded slot, the index into the expert vector `z_E` (or `PAD`).
    slot_src: Vec<u32>,
    group_bytes: usize,
    bytes: Arc<[u8]>,
    device: Option<DeviceCopy>,
}

/// The CUDA kernel: one thread per (output row, token); segments in order; `d·acc + m·Σz` per segment.
pub const KERNEL_SOURCE: &str = r#"
extern "C" __global__ void griffin_packed_down_v1(const u8* packed, const float* z, const u32* slot_src,
        const u32* npairs, float* y, u32 rows, u32 k, u32 nseg, u32 group_bytes, u32 t) {
    u32 r = blockIdx.x * blockDim.x + threadIdx.x;
    u32 tok = blockIdx.y;
    if (r >= rows || tok >= t) return;
    const u8* p = packed + (u64)(r >> 3) * group_bytes;
    u32 lane = r & 7u;
    const float* zr = z + (u64)tok * k;
    float out = 0.0f;
    u32 slot = 0;
    for (u32 s = 0; s < nseg; ++s) {
        const u16* sc = (const u16*)p;
        float d = f16_to_f32(sc[lane]);
        float m = f16_to_f32(sc[8 + lane]);
        p += 32;
        float acc = 0.0f, sum = 0.0f;
        u32 np = npairs[s];
        for (u32 q = 0; q < np; ++q) {
            u32 b = p[lane];
            p += 8;
            u32 s0 = slot_src[slot], s1 = slot_src[slot + 1];
            slot += 2;
            float z0 = s0 == 0xffffffffu ? 0.0f : zr[s0];
            float z1 = s1 == 0xffffffffu ? 0.0f : zr[s1];
            acc += (float)(b & 15u) * z0 + (float)(b >> 4) * z1;
            sum += z0 + z1;
        }
        out += d * acc + m * sum;
    }
    y[(u64)tok * rows + r] = out;
}
"#;

fn kernel() -> CustomKernel {
    let src = format!("{}{}", effllm_tensor::cuda::KERNEL_PRELUDE, KERNEL_SOURCE);
    CustomKernel::new(
        "griffin::packed_down_v1",
        &src,
        "griffin_packed_down_v1",
        &[
            Param::In(DType::U8),
            Param::In(DType::F32),
            Param::In(DType::U32),
            Param::In(DType::U32),
            Param::Out(DType::F32),
            Param::U32,
            Param::U32,
            Param::U32,
            Param::U32,
            Param::U32,
        ],
    )
}

/// The 4-bit code of element `j` (0..32) of a Q4 block's 16 code bytes.
fn code(qs: &[u8], j: usize) -> u8 {
    if j < 16 { qs[j] & 0xF } else { qs[j - 16] >> 4 }
}

/// `(d, m, codes)` of block bytes in the Q4_0/Q4_1 layout, with Q4_0's `d(q − 8)` as `m = −8d` (exact; `None` if
/// `−8d` overflows f16).
fn block_parts(ty: QuantType, b: &[u8]) -> Option<(u16, u16, &[u8])> {
    let d = u16::from_le_bytes([b[0], b[1]]);
    match ty {
        QuantType::Q4_1 => Some((d, u16::from_le_bytes([b[2], b[3]]), &b[4..20])),
        QuantType::Q4_0 => {
            let m = f16::from_f32(-8.0 * f16::from_bits(d).to_f32());
            (m.is_finite() || !f16::from_bits(d).is_finite()).then_some((d, m.to_bits(), &b[2..18]))
        }
        QuantType::Q8_0 => None,
    }
}

impl PackedDown {
    /// Whether a block format can be packed (Q4_0, Q4_1).
    pub fn supports(ty: QuantType) -> bool {
        matches!(ty, QuantType::Q4_0 | QuantType::Q4_1)
    }

    /// Packs columns `experts` (unique, any order; the output of [`PackedDown::forward`] takes `z_E` in this
    /// order) of `m` = `[rows, d_ff]`. `Ok(None)` for a format that cannot be packed (Q8_0) or a Q4_0 scale whose
    /// `−8d` overflows f16.
    pub fn new(m: &QMatrix, experts: &[u32]) -> Result<Option<PackedDown>> {
        let ty = m.quant_type();
        if !Self::supports(ty) {
            return Ok(None);
        }
        let (rows, n) = (m.n_rows(), m.n_cols());
        let nb = n / QuantType::BLOCK_ELEMS;
        // Expert positions per original block: (position in E, element within the block).
        let mut per_block: Vec<Vec<(u32, usize)>> = vec![Vec::new(); nb];
        let mut seen = vec![false; n];
        for (i, &j) in experts.iter().enumerate() {
            let j = j as usize;
            if j >= n || std::mem::replace(&mut seen[j], true) {
                return Err(invalid("PackedDown::new", format!("expert {j} repeated or out of range for width {n}")));
            }
            per_block[j / QuantType::BLOCK_ELEMS].push((i as u32, j % QuantType::BLOCK_ELEMS));
        }
        let mut segs = Vec::new();
        let mut slot_src = Vec::new();
        let mut lanes: Vec<Vec<Option<usize>>> = Vec::new();
        for (block, list) in per_block.iter().enumerate() {
            if list.is_empty() {
                continue;
            }
            let npairs = list.len().div_ceil(2);
            segs.push(Seg { block, npairs });
            let mut l: Vec<Option<usize>> = list.iter().map(|&(_, e)| Some(e)).collect();
            slot_src.extend(list.iter().map(|&(i, _)| i));
            if list.len() % 2 == 1 {
                slot_src.push(PAD);
                l.push(None);
            }
            lanes.push(l);
        }
        let group_bytes: usize = segs.iter().map(|s| 32 + 8 * s.npairs).sum();
        let groups = rows.div_ceil(GROUP);
        let mut bytes = vec![0u8; groups * group_bytes];
        let bb = ty.block_bytes();
        for r in 0..rows {
            let row = m.row_bytes(r)?;
            let (g, lane) = (r / GROUP, r % GROUP);
            let mut off = g * group_bytes;
            for (seg, l) in segs.iter().zip(&lanes) {
                let Some((d, mm, qs)) = block_parts(ty, &row[seg.block * bb..(seg.block + 1) * bb]) else {
                    return Ok(None);
                };
                bytes[off + 2 * lane..off + 2 * lane + 2].copy_from_slice(&d.to_le_bytes());
                bytes[off + 16 + 2 * lane..off + 16 + 2 * lane + 2].copy_from_slice(&mm.to_le_bytes());
                off += 32;
                for p in 0..seg.npairs {
                    let c = |e: Option<usize>| e.map_or(0, |e| code(qs, e));
                    bytes[off + 8 * p + lane] = c(l[2 * p]) | (c(l[2 * p + 1]) << 4);
                }
                off += 8 * seg.npairs;
            }
        }
        Ok(Some(PackedDown {
            ty,
            rows,
            k: experts.len(),
            segs,
            slot_src,
            group_bytes,
            bytes: bytes.into(),
            device: None,
        }))
    }

    /// The block format the codes came from.
    pub fn quant_type(&self) -> QuantType {
        self.ty
    }

    /// Output features `d`.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of experts `k` (input features).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Bytes of the packed codes and scales (what one decode step reads).
    pub fn nbytes(&self) -> usize {
        self.bytes.len()
    }

    /// Where the packed bytes live for [`PackedDown::forward`].
    pub fn device(&self) -> Device {
        self.device.as_ref().map_or(Device::Cpu, |d| d.bytes.device())
    }

    /// The same packing with a copy on `device` (the host copy stays).
    pub fn to_device(&self, device: &Device) -> Result<PackedDown> {
        let mut out = self.clone();
        out.device = match device {
            Device::Cpu => None,
            dev => {
                let npairs: Vec<u32> = self.segs.iter().map(|s| s.npairs as u32).collect();
                Some(DeviceCopy {
                    bytes: Tensor::from_slice(&self.bytes[..], &[self.bytes.len()], dev)?,
                    slot_src: Tensor::from_slice(&self.slot_src, &[self.slot_src.len()], dev)?,
                    npairs: Tensor::from_slice(&npairs, &[npairs.len()], dev)?,
                })
            }
        };
        Ok(out)
    }

    /// The packed weights as f32 `[rows, k]` (column `i` = expert `E[i]`): every value is `d·q + m` computed in
    /// f32, bitwise the dequantized dense column.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.k];
        for r in 0..self.rows {
            let (g, lane) = (r / GROUP, r % GROUP);
            let mut off = g * self.group_bytes;
            let mut slot = 0;
            for seg in &self.segs {
                let d = f16::from_le_bytes([self.bytes[off + 2 * lane], self.bytes[off + 2 * lane + 1]]).to_f32();
                let m = f16::from_le_bytes([self.bytes[off + 16 + 2 * lane], self.bytes[off + 17 + 2 * lane]]).to_f32();
                off += 32;
                for p in 0..seg.npairs {
                    let b = self.bytes[off + 8 * p + lane];
                    for (h, q) in [b & 0xF, b >> 4].into_iter().enumerate() {
                        let src = self.slot_src[slot + 2 * p + h];
                        if src != PAD {
                            out[r * self.k + src as usize] = d * f32::from(q) + m;
                        }
                    }
                }
                off += 8 * seg.npairs;
                slot += 2 * seg.npairs;
            }
        }
        out
    }

    /// The padded activation vector (`z_E` in slot order, 0 in padding slots) and the per-segment sums `Σz`.
    fn prepare(&self, z: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let zpad: Vec<f32> = self.slot_src.iter().map(|&s| if s == PAD { 0.0 } else { z[s as usize] }).collect();
        let mut sums = Vec::with_capacity(self.segs.len());
        let mut slot = 0;
        for seg in &self.segs {
            sums.push(zpad[slot..slot + 2 * seg.npairs].iter().sum());
            slot += 2 * seg.npairs;
        }
        (zpad, sums)
    }

    /// `y = W_down[:, E] · z` for one vector `z` = `z_E` (`k` values) into `y` (`rows` values), on the CPU.
    pub fn matvec(&self, z: &[f32], y: &mut [f32], path: KernelPath) -> Result<()> {
        self.matmul(z, 1, y, path)
    }

    /// `Y = Z · W_down[:, E]ᵀ` for `t` rows `Z` = `[t, k]` into `Y` = `[t, rows]`, on the CPU.
    pub fn matmul(&self, z: &[f32], t: usize, y: &mut [f32], path: KernelPath) -> Result<()> {
        if z.len() != t * self.k || y.len() != t * self.rows {
            return Err(GriffinError::ShapeMismatch {
                op: "PackedDown::matmul",
                expected: vec![t, self.k, t, self.rows],
                found: vec![z.len(), y.len()],
            });
        }
        let avx2 = path.uses_avx2();
        let groups = self.rows.div_ceil(GROUP);
        for (zr, yr) in z.chunks_exact(self.k.max(1)).zip(y.chunks_exact_mut(self.rows.max(1))).take(t) {
            let (zpad, sums) = self.prepare(zr);
            let mut ypad = vec![0f32; groups * GROUP];
            let run = |g0: usize, out: &mut [f32]| {
                for (i, o) in out.chunks_exact_mut(GROUP).enumerate() {
                    let g = g0 + i;
                    let bytes = &self.bytes[g * self.group_bytes..(g + 1) * self.group_bytes];
                    let o: &mut [f32; GROUP] = o.try_into().expect("chunks of GROUP");
                    #[cfg(target_arch = "x86_64")]
                    if avx2 {
                        // SAFETY: `uses_avx2` checked AVX2, FMA and F16C at run time; `bytes` is one whole group
                        // built for `self.segs`, and `zpad`/`sums` come from `prepare` for the same segments.
                        unsafe { group_avx2(bytes, &self.segs, &zpad, &sums, o) };
                        continue;
                    }
                    group_scalar(bytes, &self.segs, &zpad, &sums, o);
                }
            };
            let _ = avx2;
            if groups * self.group_bytes >= 1 << 14 {
                use rayon::prelude::*;
                effllm_tensor::threads::install(|| {
                    ypad.par_chunks_mut(GROUP * GROUPS_PER_TASK)
                        .enumerate()
                        .for_each(|(task, out)| run(task * GROUPS_PER_TASK, out));
                });
            } else {
                run(0, &mut ypad);
            }
            yr.copy_from_slice(&ypad[..self.rows]);
        }
        Ok(())
    }

    /// `z_E` = `[T, k]` → `[T, rows]` (f32), on the CPU or, with a device copy ([`PackedDown::to_device`]), on
    /// CUDA through effllm-tensor's custom-kernel API.
    pub fn forward(&self, z: &Tensor) -> Result<Tensor> {
        let shape = z.shape();
        if shape.len() != 2 || shape[1] != self.k {
            return Err(GriffinError::ShapeMismatch {
                op: "PackedDown::forward",
                expected: vec![shape.first().copied().unwrap_or(0), self.k],
                found: shape.to_vec(),
            });
        }
        let t = shape[0];
        let device = z.device();
        match (&self.device, device) {
            (None, Device::Cpu) => {
                let zv = z.to_dtype(DType::F32)?.contiguous()?.to_vec::<f32>()?;
                let mut y = vec![0f32; t * self.rows];
                self.matmul(&zv, t, &mut y, KernelPath::Auto)?;
                Ok(Tensor::from_vec(y, &[t, self.rows], &Device::Cpu)?)
            }
            (Some(dc), dev) if dc.bytes.device() == dev => {
                let zc = z.to_dtype(DType::F32)?.contiguous()?;
                let mut y = Tensor::zeros(&[t, self.rows], DType::F32, &dev)?;
                let dims = LaunchDims {
                    grid: (self.rows.div_ceil(128) as u32, t as u32, 1),
                    block: (128, 1, 1),
                    shared_mem_bytes: 0,
                };
                let u = |v: usize| Arg::U32(v as u32);
                let mut args = [
                    Arg::In(&dc.bytes),
                    Arg::In(&zc),
                    Arg::In(&dc.slot_src),
                    Arg::In(&dc.npairs),
                    Arg::Out(&mut y),
                    u(self.rows),
                    u(self.k),
                    u(self.segs.len()),
                    u(self.group_bytes),
                    u(t),
                ];
                kernel().launch(dev, dims, &mut args, 1)?;
                Ok(y)
            }
            (_, dev) => Err(GriffinError::Tensor(effllm_tensor::Error::DeviceMismatch {
                op: "PackedDown::forward",
                lhs: self.device(),
                rhs: dev,
            })),
        }
    }
}

/// One group of 8 rows, portable scalar code (the oracle of the AVX2 kernel; same segment order).
fn group_scalar(bytes: &[u8], segs: &[Seg], zpad: &[f32], sums: &[f32], out: &mut [f32; GROUP]) {
    let mut y = [0f32; GROUP];
    let (mut off, mut slot) = (0usize, 0usize);
    for (seg, &s) in segs.iter().zip(sums) {
        let mut acc = [0f32; GROUP];
        let w = &bytes[off + 32..off + 32 + 8 * seg.npairs];
        for (p, word) in w.chunks_exact(GROUP).enumerate() {
            let (z0, z1) = (zpad[slot + 2 * p], zpad[slot + 2 * p + 1]);
            for (a, &b) in acc.iter_mut().zip(word) {
                *a += f32::from(b & 0xF) * z0 + f32::from(b >> 4) * z1;
            }
        }
        for lane in 0..GROUP {
            let d = f16::from_le_bytes([bytes[off + 2 * lane], bytes[off + 2 * lane + 1]]).to_f32();
            let m = f16::from_le_bytes([bytes[off + 16 + 2 * lane], bytes[off + 17 + 2 * lane]]).to_f32();
            y[lane] += d * acc[lane] + m * s;
        }
        off += 32 + 8 * seg.npairs;
        slot += 2 * seg.npairs;
    }
    *out = y;
}

/// One group of 8 rows with AVX2/FMA/F16C: lanes are rows.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `bytes` must be one group laid out for `segs`, `zpad` must hold
/// `2 · Σ npairs` values and `sums` one value per segment.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn group_avx2(bytes: &[u8], segs: &[Seg], zpad: &[f32], sums: &[f32], out: &mut [f32; GROUP]) {
    use std::arch::x86_64::*;
    let total_pairs: usize = segs.iter().map(|s| s.npairs).sum();
    assert!(bytes.len() >= 32 * segs.len() + 8 * total_pairs && zpad.len() >= 2 * total_pairs);
    assert!(sums.len() >= segs.len());
    let mask = _mm256_set1_epi32(0xF);
    let mut y = _mm256_setzero_ps();
    let mut p = bytes.as_ptr();
    let z = zpad.as_ptr();
    let mut off = 0usize;
    // SAFETY (whole body): the asserts above bound every pointer offset: each segment reads 32 scale bytes and
    // 8 bytes per pair, and 2 activations per pair.
    unsafe {
        for (si, seg) in segs.iter().enumerate() {
            let dv = _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i));
            let mv = _mm256_cvtph_ps(_mm_loadu_si128(p.add(16) as *const __m128i));
            p = p.add(32);
            let (mut a0, mut a1, mut a2, mut a3) =
                (_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps());
            let mut q = 0;
            while q + 2 <= seg.npairs {
                let v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(p as *const __m128i));
                let w = _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.add(8) as *const __m128i));
                a0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(v, mask)), _mm256_set1_ps(*z.add(off)), a0);
                a1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(v, 4)), _mm256_set1_ps(*z.add(off + 1)), a1);
                a2 =
                    _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(w, mask)), _mm256_set1_ps(*z.add(off + 2)), a2);
                a3 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(w, 4)), _mm256_set1_ps(*z.add(off + 3)), a3);
                p = p.add(16);
                off += 4;
                q += 2;
            }
            if q < seg.npairs {
                let v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(p as *const __m128i));
                a0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(v, mask)), _mm256_set1_ps(*z.add(off)), a0);
                a1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(v, 4)), _mm256_set1_ps(*z.add(off + 1)), a1);
                p = p.add(8);
                off += 2;
            }
            let acc = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
            y = _mm256_fmadd_ps(dv, acc, y);
            y = _mm256_fmadd_ps(mv, _mm256_set1_ps(*sums.get_unchecked(si)), y);
        }
        _mm256_storeu_ps(out.as_mut_ptr(), y);
    }
}
