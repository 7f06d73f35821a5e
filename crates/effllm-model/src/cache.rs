//! The KV cache: per layer and per KV head, post-RoPE keys and values in preallocated buffers, with append,
//! truncate, compaction to chosen slots, read access, and a pluggable [`KvCachePolicy`].
//!
//! Layout: for each layer and KV head a tensor `[1, 1, capacity, head_dim]`; the first `len` rows are live. A
//! prefix of such a buffer is contiguous, so attention reads it without a copy; new rows are written in place
//! with `Tensor::slice_assign`, and the capacity doubles when it runs out (amortised O(1) per token).
//! Every KV head of a layer holds the same number of slots, but [`LayerKv::compact_heads`] may keep different
//! slots per head (H2O, TriForce-style selection); positions are therefore tracked per head.
//!
//! Storage is f32 by default, or f16 ([`KvCache::with_dtype`], llama.cpp's default): half the bytes, which is what
//! long-context decode on a CPU is bound by. Keys and values are rounded to f16 once, when written; attention reads
//! the f16 rows directly on the CPU (widened in registers) and converts them on CUDA. Reads through
//! [`LayerKv::keys`] and [`LayerKv::values`] are always f32.

use effllm_tensor::{DType, Device, Tensor};

use crate::error::{Result, invalid};

/// The cache of one layer.
#[derive(Clone, Debug)]
pub struct LayerKv {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    positions: Vec<Vec<u32>>,
    len: usize,
    capacity: usize,
    head_dim: usize,
    device: Device,
    dtype: DType,
}

const INITIAL_CAPACITY: usize = 64;

impl LayerKv {
    fn new(n_head_kv: usize, head_dim: usize, device: &Device, dtype: DType) -> LayerKv {
        LayerKv {
            keys: Vec::new(),
            values: Vec::new(),
            positions: vec![Vec::new(); n_head_kv],
            len: 0,
            capacity: 0,
            head_dim,
            device: *device,
            dtype,
        }
    }

    /// Live slots.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no slot is live.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Allocated slots.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// KV heads.
    pub fn n_heads(&self) -> usize {
        self.positions.len()
    }

    /// The storage dtype of keys and values (f32 or f16).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Absolute positions of the live slots of KV head `head`.
    pub fn positions(&self, head: usize) -> &[u32] {
        &self.positions[head]
    }

    /// Post-RoPE keys of KV head `head`, `[len, head_dim]` f32: a view (no copy) of an f32 cache, a widened copy of
    /// an f16 one.
    pub fn keys(&self, head: usize) -> Result<Tensor> {
        self.view(&self.keys, head)
    }

    /// Values of KV head `head`, `[len, head_dim]` f32: a view (no copy) of an f32 cache, a widened copy of an f16
    /// one.
    pub fn values(&self, head: usize) -> Result<Tensor> {
        self.view(&self.values, head)
    }

    fn view(&self, bufs: &[Tensor], head: usize) -> Result<Tensor> {
        if head >= self.n_heads() {
            return Err(invalid("cache read", format!("KV head {head} of {}", self.n_heads())));
        }
        if self.len == 0 {
            return Ok(Tensor::zeros(&[0, self.head_dim], DType::F32, &self.device)?);
        }
        Ok(bufs[head].narrow(2, 0, self.len)?.reshape(&[self.len, self.head_dim])?.to_dtype(DType::F32)?)
    }

    /// `[1, 1, len, head_dim]` views for attention, in the storage dtype.
    pub(crate) fn attention_views(&self, head: usize) -> Result<(Tensor, Tensor)> {
        Ok((self.keys[head].narrow(2, 0, self.len)?, self.values[head].narrow(2, 0, self.len)?))
    }

    fn reserve(&mut self, needed: usize) -> Result<()> {
        if needed <= self.capacity {
            return Ok(());
        }
        let cap = needed.max(self.capacity * 2).max(INITIAL_CAPACITY);
        let dtype = self.dtype;
        let grow = |old: &mut Vec<Tensor>, len: usize, hd: usize, dev: &Device, n: usize| -> Result<()> {
            let mut fresh = Vec::with_capacity(n);
            for h in 0..n {
                let mut t = Tensor::zeros(&[1, 1, cap, hd], dtype, dev)?;
                if let Some(prev) = old.get(h).filter(|_| len > 0) {
                    t.slice_assign(2, 0, &prev.narrow(2, 0, len)?)?;
                }
                fresh.push(t);
            }
            *old = fresh;
            Ok(())
        };
        let n = self.n_heads();
        grow(&mut self.keys, self.len, self.head_dim, &self.device, n)?;
        grow(&mut self.values, self.len, self.head_dim, &self.device, n)?;
        self.capacity = cap;
        Ok(())
    }

    /// Appends new slots: `k`, `v` = `[1, n_heads, T, head_dim]` f32, `positions` the T absolute positions (rounded
    /// to the storage dtype).
    pub fn append(&mut self, k: &Tensor, v: &Tensor, positions: &[u32]) -> Result<()> {
        let t = positions.len();
        let want = [1, self.n_heads(), t, self.head_dim];
        if k.shape() != want || v.shape() != want {
            return Err(invalid(
                "cache append",
                format!("keys {:?} / values {:?}, expected {want:?}", k.shape(), v.shape()),
            ));
        }
        self.reserve(self.len + t)?;
        let (k, v) = (k.to_dtype(self.dtype)?, v.to_dtype(self.dtype)?);
        for h in 0..self.n_heads() {
            self.keys[h].slice_assign(2, self.len, &k.narrow(1, h, 1)?)?;
            self.values[h].slice_assign(2, self.len, &v.narrow(1, h, 1)?)?;
            self.positions[h].extend_from_slice(positions);
        }
        self.len += t;
        Ok(())
    }

    /// Keeps the first `len` slots (no-op if already shorter).
    pub fn truncate(&mut self, len: usize) {
        if len < self.len {
            self.len = len;
            for p in &mut self.positions {
                p.truncate(len);
            }
        }
    }

    /// Keeps exactly the slots `keep` (indices into the live slots, in the order given; no duplicates) in every
    /// head.
    pub fn compact(&mut self, keep: &[usize]) -> Result<()> {
        let per_head = vec![keep.to_vec(); self.n_heads()];
        self.compact_heads(&per_head)
    }

    /// Keeps, for each KV head `h`, the slots `keep[h]` (same count for every head, distinct, each `< len`).
    pub fn compact_heads(&mut self, keep: &[Vec<usize>]) -> Result<()> {
        if keep.len() != self.n_heads() {
            return Err(invalid("cache compaction", format!("{} slot lists for {} heads", keep.len(), self.n_heads())));
        }
        let n = keep.first().map_or(0, Vec::len);
        for (h, k) in keep.iter().enumerate() {
            if k.len() != n {
                return Err(invalid("cache compaction", format!("head {h} keeps {} slots, head 0 keeps {n}", k.len())));
            }
            let mut seen = vec![false; self.len];
            for &s in k {
                if s >= self.len || std::mem::replace(&mut seen[s], true) {
                    return Err(invalid(
                        "cache compaction",
                        format!("slot {s} of head {h} is out of range (len {}) or repeated", self.len),
                    ));
                }
            }
        }
        if n == 0 {
            self.truncate(0);
            return Ok(());
        }
        for (h, k) in keep.iter().enumerate() {
            let ids: Vec<u32> = k.iter().map(|&s| s as u32).collect();
            let idx = Tensor::from_slice(&ids, &[n], &self.device)?;
            for bufs in [&mut self.keys, &mut self.values] {
                let picked = bufs[h].narrow(2, 0, self.len)?.index_select(2, &idx)?;
                bufs[h].slice_assign(2, 0, &picked)?;
            }
            self.positions[h] = k.iter().map(|&s| self.positions[h][s]).collect();
        }
        self.len = n;
        Ok(())
    }

    /// Overwrites the live slots of KV head `head` with `keys`, `values` = `[len', head_dim]` and `positions`
    /// (LoCoCo-style fused slots, or externally computed caches); the head count of slots must stay equal across
    /// heads, so call this for every head with the same `len'`. The layer's length becomes `len'`.
    pub fn replace_head(&mut self, head: usize, keys: &Tensor, values: &Tensor, positions: &[u32]) -> Result<()> {
        let n = positions.len();
        let want = [n, self.head_dim];
        if head >= self.n_heads() || keys.shape() != want || values.shape() != want {
            return Err(invalid(
                "cache replace",
                format!(
                    "head {head} of {}, keys {:?}, values {:?}, expected {want:?}",
                    self.n_heads(),
                    keys.shape(),
                    values.shape()
                ),
            ));
        }
        self.reserve(n)?;
        self.keys[head].slice_assign(2, 0, &keys.to_dtype(self.dtype)?.reshape(&[1, 1, n, self.head_dim])?)?;
        self.values[head].slice_assign(2, 0, &values.to_dtype(self.dtype)?.reshape(&[1, 1, n, self.head_dim])?)?;
        self.positions[head] = positions.to_vec();
        self.len = n;
        Ok(())
    }
}

/// A cache-management strategy plugged into a [`KvCache`] (StreamingLLM, H2O, TriForce retrieval, LoCoCo).
///
/// The model calls [`KvCachePolicy::before_append`] for each layer before it writes a batch's keys and values,
/// and, when [`KvCachePolicy::wants_attention_probs`] says so, [`KvCachePolicy::record_attention`] after the
/// layer's attention with the probabilities it used.
pub trait KvCachePolicy: std::fmt::Debug + Send {
    /// May evict, compact or replace slots of `kv` (layer `layer`) before `incoming` new slots are appended.
    fn before_append(&mut self, layer: usize, kv: &mut LayerKv, incoming: usize) -> Result<()>;

    /// Whether the model should compute and report attention probabilities for `layer` (costs a second pass).
    fn wants_attention_probs(&self, _layer: usize) -> bool {
        false
    }

    /// Attention probabilities `[n_head, T, len]` of the batch that was just appended to `kv`.
    fn record_attention(&mut self, _layer: usize, _kv: &mut LayerKv, _probs: &Tensor) -> Result<()> {
        Ok(())
    }
}

/// StreamingLLM (Xiao et al., 2023): keep the first `sink` slots and the most recent `recent` slots. Keys keep
/// their original (absolute-position) rotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SinkWindowPolicy {
    /// Attention-sink slots kept from the start.
    pub sink: usize,
    /// Most recent slots kept.
    pub recent: usize,
}

impl KvCachePolicy for SinkWindowPolicy {
    fn before_append(&mut self, _layer: usize, kv: &mut LayerKv, incoming: usize) -> Result<()> {
        let budget = self.sink + self.recent;
        if kv.len() + incoming <= budget {
            return Ok(());
        }
        // After the append the window must hold the last `recent` slots, `incoming` of which are new.
        let keep_old_recent = self.recent.saturating_sub(incoming);
        let len = kv.len();
        let sink = self.sink.min(len);
        let tail_start = len.saturating_sub(keep_old_recent).max(sink);
        let keep: Vec<usize> = (0..sink).chain(tail_start..len).collect();
        kv.compact(&keep)
    }
}

/// Whether `dtype` can store a KV cache (f32 or f16).
pub(crate) fn check_cache_dtype(dtype: DType) -> Result<()> {
    match dtype {
        DType::F32 | DType::F16 => Ok(()),
        other => Err(invalid("KV cache", format!("storage dtype {other}; f32 or f16 are supported"))),
    }
}

/// The KV cache of a whole model: one [`LayerKv`] per layer, and an optional policy.
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<LayerKv>,
    policy: Option<Box<dyn KvCachePolicy>>,
}

impl KvCache {
    /// An empty f32 cache for `n_layer` layers of `n_head_kv` heads of size `head_dim` on `device`.
    pub fn new(n_layer: usize, n_head_kv: usize, head_dim: usize, device: &Device) -> KvCache {
        KvCache::build(n_layer, n_head_kv, head_dim, device, DType::F32)
    }

    /// An empty cache storing keys and values in `dtype`: f32 (as [`KvCache::new`]) or f16 (half the bytes; each
    /// value rounded once, when written). Any other dtype is an error.
    pub fn with_dtype(
        n_layer: usize,
        n_head_kv: usize,
        head_dim: usize,
        device: &Device,
        dtype: DType,
    ) -> Result<KvCache> {
        check_cache_dtype(dtype)?;
        Ok(KvCache::build(n_layer, n_head_kv, head_dim, device, dtype))
    }

    pub(crate) fn build(n_layer: usize, n_head_kv: usize, head_dim: usize, device: &Device, dtype: DType) -> KvCache {
        let layers = (0..n_layer).map(|_| LayerKv::new(n_head_kv, head_dim, device, dtype)).collect();
        KvCache { layers, policy: None }
    }

    /// Installs a policy (replacing any previous one).
    pub fn with_policy(mut self, policy: Box<dyn KvCachePolicy>) -> KvCache {
        self.policy = Some(policy);
        self
    }

    /// Removes and returns the policy.
    pub fn take_policy(&mut self) -> Option<Box<dyn KvCachePolicy>> {
        self.policy.take()
    }

    /// Number of layers.
    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }

    /// Live slots of layer 0 (the sequence length for a plain cache).
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, LayerKv::len)
    }

    /// Whether layer 0 holds no slot.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Layer `layer`.
    pub fn layer(&self, layer: usize) -> Result<&LayerKv> {
        let n = self.layers.len();
        self.layers.get(layer).ok_or_else(|| invalid("cache read", format!("layer {layer} of {n}")))
    }

    /// Layer `layer`, mutably.
    pub fn layer_mut(&mut self, layer: usize) -> Result<&mut LayerKv> {
        let n = self.layers.len();
        self.layers.get_mut(layer).ok_or_else(|| invalid("cache write", format!("layer {layer} of {n}")))
    }

    /// Truncates every layer to at most `len` slots.
    pub fn truncate(&mut self, len: usize) {
        for l in &mut self.layers {
            l.truncate(len);
        }
    }

    /// Keeps the slots `keep` in every layer and head (each layer must hold more than `max(keep)` slots).
    pub fn compact(&mut self, keep: &[usize]) -> Result<()> {
        self.layers.iter_mut().try_for_each(|l| l.compact(keep))
    }

    /// Drops every slot.
    pub fn clear(&mut self) {
        self.truncate(0);
    }

    /// Bytes held by the key/value buffers (capacity, not just live slots).
    pub fn nbytes(&self) -> usize {
        self.layers.iter().map(|l| 2 * l.n_heads() * l.capacity() * l.head_dim * l.dtype.size_in_bytes()).sum()
    }

    pub(crate) fn parts_mut(&mut self, layer: usize) -> Result<(&mut LayerKv, Option<&mut Box<dyn KvCachePolicy>>)> {
        let n = self.layers.len();
        let kv = self.layers.get_mut(layer).ok_or_else(|| invalid("cache write", format!("layer {layer} of {n}")))?;
        Ok((kv, self.policy.as_mut()))
    }
}
