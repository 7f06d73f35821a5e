//! Normalized attention inside chunks, with RoPE restarting at every chunk, and its streaming key/value cache.

use effllm_tensor::{AttentionMask, Device, RopeConfig, RopeStyle, Tensor};

use crate::error::{MegalodonError, Result};

/// The keys (already rotated) and values of the current, partly filled chunk: `count < C` positions. Empty when a
/// chunk has just completed.
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    kv: Option<(Tensor, Tensor)>,
    count: usize,
}

impl KvCache {
    /// An empty cache.
    pub fn new() -> KvCache {
        KvCache::default()
    }

    /// Positions held: the position inside the current chunk, always `< C`.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Keys `[B, H, count, dz]` (rotated) and values `[B, H, count, dv]`, if any.
    pub fn keys_values(&self) -> Option<(&Tensor, &Tensor)> {
        self.kv.as_ref().map(|(k, v)| (k, v))
    }

    /// The same cache without graph nodes.
    pub fn detach(&self) -> KvCache {
        KvCache { kv: self.kv.as_ref().map(|(k, v)| (k.detach(), v.detach())), count: self.count }
    }
}

/// Chunked causal attention: `C` = `chunk`, scores `scale · q·k` (Megalodon uses `scale` = 1: its queries and keys
/// are normalized), RoPE (interleaved pairs, base `rope_base`) at the position inside the chunk.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ChunkedAttention {
    /// Chunk length `C`.
    pub chunk: usize,
    /// RoPE base.
    pub rope_base: f64,
    /// Score scale (1.0 in Megalodon; exposed for experiments).
    pub scale: f64,
}

fn positions(start: usize, len: usize, device: &Device) -> Result<Tensor> {
    let p: Vec<u32> = (start as u32..(start + len) as u32).collect();
    Ok(Tensor::from_vec(p, &[len], &Device::Cpu)?.to_device(device)?)
}

impl ChunkedAttention {
    fn rope(&self, dz: usize) -> RopeConfig {
        RopeConfig { style: RopeStyle::Interleaved, base: self.rope_base, rotary_dims: dz }
    }

    /// Attention of `q`, `k` = `[B, L, H, dz]`, `v` = `[B, L, H, dv]` continuing the chunk held in `cache`:
    /// `[B, L, H·dv]`. Query `t` sees the cached keys of its chunk and the new keys up to itself; at every chunk
    /// end the cache empties. Full chunks in the middle of a long call run as one batched attention.
    pub fn forward(&self, q: &Tensor, k: &Tensor, v: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        const OP: &str = "ChunkedAttention::forward";
        let [b, l, h, dz] = *q.shape() else {
            return Err(MegalodonError::Shape {
                op: OP,
                expected: "q = [B, L, H, dz]".into(),
                found: q.shape().to_vec(),
            });
        };
        let dv = *v.shape().last().unwrap_or(&0);
        if k.shape() != q.shape() || v.shape() != [b, l, h, dv] {
            return Err(MegalodonError::Shape {
                op: OP,
                expected: format!("k = {:?}, v = [{b}, {l}, {h}, dv]", q.shape()),
                found: [k.shape(), v.shape()].concat(),
            });
        }
        if self.chunk == 0 {
            return Err(MegalodonError::Config("chunk size must be positive".into()));
        }
        if l == 0 {
            return Err(MegalodonError::InvalidArgument { op: OP, msg: "empty sequence (L = 0)".into() });
        }
        if let Some((ck, _)) = &cache.kv
            && (ck.shape()[0] != b || ck.shape()[1] != h || ck.shape()[3] != dz)
        {
            return Err(MegalodonError::State {
                op: OP,
                msg: format!("cache keys {:?} do not fit q {:?}", ck.shape(), q.shape()),
            });
        }
        let c = self.chunk;
        let dev = q.device();
        let (qh, kh, vh) = (q.transpose(1, 2)?, k.transpose(1, 2)?, v.transpose(1, 2)?); // [B, H, L, ·]
        let rope = self.rope(dz);
        let mut outs = Vec::new();
        let mut pos = 0;
        // A segment inside one chunk that starts at in-chunk position `start` with `cache` holding 0..start.
        let segment = |pos: usize, seg: usize, cache: &mut KvCache| -> Result<Tensor> {
            let start = cache.count;
            let pp = positions(start, seg, &dev)?;
            let qs = qh.narrow(2, pos, seg)?.rope(&pp, &rope)?;
            let ks = kh.narrow(2, pos, seg)?.rope(&pp, &rope)?;
            let vs = vh.narrow(2, pos, seg)?;
            let (kall, vall) = match cache.kv.take() {
                Some((ck, cv)) => (Tensor::concat(&[&ck, &ks], 2)?, Tensor::concat(&[&cv, &vs], 2)?),
                None => (ks, vs),
            };
            let o = qs.attention(&kall, &vall, &AttentionMask::Causal, Some(self.scale))?;
            if start + seg == c {
                *cache = KvCache::default();
            } else {
                *cache = KvCache { kv: Some((kall, vall)), count: start + seg };
            }
            Ok(o)
        };
        if cache.count > 0 {
            let seg = (c - cache.count).min(l);
            outs.push(segment(0, seg, cache)?);
            pos = seg;
        }
        let full = (l - pos) / c;
        if full > 0 {
            let n = full * c;
            let pp = positions(0, c, &dev)?;
            let split = |t: &Tensor, w: usize| -> Result<Tensor> {
                Ok(t.narrow(2, pos, n)?.reshape(&[b, h, full, c, w])?.permute(&[0, 2, 1, 3, 4])?.reshape(&[
                    b * full,
                    h,
                    c,
                    w,
                ])?)
            };
            let qs = split(&qh, dz)?.rope(&pp, &rope)?;
            let ks = split(&kh, dz)?.rope(&pp, &rope)?;
            let vs = split(&vh, dv)?;
            let o = qs.attention(&ks, &vs, &AttentionMask::Causal, Some(self.scale))?;
            outs.push(o.reshape(&[b, full, h, c, dv])?.permute(&[0, 2, 1, 3, 4])?.reshape(&[b, h, n, dv])?);
            pos += n;
        }
        if pos < l {
            outs.push(segment(pos, l - pos, cache)?);
        }
        let refs: Vec<&Tensor> = outs.iter().collect();
        let o = if refs.len() == 1 { outs[0].clone() } else { Tensor::concat(&refs, 2)? };
        Ok(o.transpose(1, 2)?.reshape(&[b, l, h * dv])?)
    }
}
