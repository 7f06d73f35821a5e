#!/usr/bin/env python3
"""PyTorch eager baseline for `effllm-train`'s training throughput (docs/benchmarks.md, issue "Training").

The same architecture as effllm-train's presets: a Llama with RMSNorm (eps 1e-5), grouped-query attention with
NeoX RoPE (base 10000), SwiGLU FFN, tied embeddings, no biases; the same initialisation scheme (N(0, 0.02²),
output projections N(0, (0.02/sqrt(2L))²)); AdamW (betas 0.9/0.95, weight decay 0.1 on matrices only, PyTorch's
default implementation) with global-norm clipping at 1.0; mean cross-entropy. Attention is
`F.scaled_dot_product_attention` with `is_causal=True` (what a PyTorch user writes; it dispatches to fused
flash / memory-efficient kernels). Precision "f32" runs everything in float32 (TF32 off); "bf16" runs the forward
under `torch.autocast(dtype=torch.bfloat16)` with float32 master weights and optimizer state — the split effllm's
mixed precision makes.

Tokens are a deterministic pseudo-random stream (throughput does not depend on the text). Each timed step ends
with a device synchronisation. Prints one JSON line: {"precision", "tokens_per_step", "steps", "seconds",
"tokens_per_s", "median_step_s", "median_tokens_per_s", "torch", ...}.

    python3 scripts/bench/train_torch.py --layers 8 --d 512 --heads 8 --kv-heads 8 --ff 1536 \
        --seq 256 --batch 32 --precision bf16 --steps 20

Tested with torch 2.11 (the GPU machines' version).
"""

import argparse
import json
import math
import time

import torch
import torch.nn.functional as F


class Block(torch.nn.Module):
    def __init__(self, d, heads, kv_heads, ff, layers):
        super().__init__()
        hd = d // heads
        self.heads, self.kv_heads, self.hd = heads, kv_heads, hd
        self.attn_norm = torch.nn.Parameter(torch.ones(d))
        self.ffn_norm = torch.nn.Parameter(torch.ones(d))
        self.wq = torch.nn.Linear(d, heads * hd, bias=False)
        self.wk = torch.nn.Linear(d, kv_heads * hd, bias=False)
        self.wv = torch.nn.Linear(d, kv_heads * hd, bias=False)
        self.wo = torch.nn.Linear(heads * hd, d, bias=False)
        self.gate = torch.nn.Linear(d, ff, bias=False)
        self.up = torch.nn.Linear(d, ff, bias=False)
        self.down = torch.nn.Linear(ff, d, bias=False)
        out_std = 0.02 / math.sqrt(2 * layers)
        for lin in (self.wq, self.wk, self.wv, self.gate, self.up):
            torch.nn.init.normal_(lin.weight, 0.0, 0.02)
        for lin in (self.wo, self.down):
            torch.nn.init.normal_(lin.weight, 0.0, out_std)

    def forward(self, x, cos, sin):
        b, t, d = x.shape
        h = F.rms_norm(x, (d,), self.attn_norm, 1e-5)
        q = self.wq(h).view(b, t, self.heads, self.hd).transpose(1, 2)
        k = self.wk(h).view(b, t, self.kv_heads, self.hd).transpose(1, 2)
        v = self.wv(h).view(b, t, self.kv_heads, self.hd).transpose(1, 2)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.heads != self.kv_heads)
        x = x + self.wo(a.transpose(1, 2).reshape(b, t, d))
        h = F.rms_norm(x, (d,), self.ffn_norm, 1e-5)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


def rope(x, cos, sin):
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)


class Llama(torch.nn.Module):
    def __init__(self, vocab, d, heads, kv_heads, ff, layers, seq):
        super().__init__()
        self.emb = torch.nn.Parameter(torch.randn(vocab, d) * 0.02)
        self.blocks = torch.nn.ModuleList(Block(d, heads, kv_heads, ff, layers) for _ in range(layers))
        self.norm = torch.nn.Parameter(torch.ones(d))
        hd = d // heads
        inv = 10000.0 ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
        ang = torch.arange(seq, dtype=torch.float64)[:, None] * inv[None, :]
        self.register_buffer("cos", ang.cos().float(), persistent=False)
        self.register_buffer("sin", ang.sin().float(), persistent=False)

    def forward(self, ids):
        x = F.embedding(ids, self.emb)
        for blk in self.blocks:
            x = blk(x, self.cos, self.sin)
        x = F.rms_norm(x, (x.shape[-1],), self.norm, 1e-5)
        return x @ self.emb.t()  # tied head


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--ff", type=int, default=1536)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--precision", choices=["f32", "bf16"], default="bf16")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--profile", action="store_true",
                    help="after the timed steps, print torch.profiler's per-kernel table of two more steps (stderr)")
    a = ap.parse_args()
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.device(a.device)
    model = Llama(a.vocab, a.d, a.heads, a.kv_heads, a.ff, a.layers, a.seq).to(dev)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-3, betas=(0.9, 0.95), eps=1e-8,
    )
    n = a.batch * (a.seq + 1)
    stream = (torch.arange(n * (a.steps + a.warmup), dtype=torch.int64) * 2654435761) % a.vocab

    def step(i):
        rows = stream[i * n:(i + 1) * n].view(a.batch, a.seq + 1).to(dev, non_blocking=True)
        x, y = rows[:, :-1], rows[:, 1:]
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=a.precision == "bf16"):
            logits = model(x)
        loss = F.cross_entropy(logits.float().reshape(-1, a.vocab), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss

    for i in range(a.warmup):
        step(i)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    times = []
    for i in range(a.steps):
        ts = time.perf_counter()
        loss = step(a.warmup + i)
        # Each step ends when the device has finished it (as effllm's train_speed example measures).
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - ts)
    loss.item()
    secs = time.perf_counter() - t0
    median = sorted(times)[len(times) // 2]
    tokens = a.batch * a.seq * a.steps
    if a.profile:
        import sys
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for i in range(2):
                step(a.warmup + i)
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=30), file=sys.stderr)
    print(json.dumps({
        "precision": a.precision, "tokens_per_step": a.batch * a.seq, "steps": a.steps, "seconds": secs,
        "tokens_per_s": tokens / secs, "median_step_s": median, "median_tokens_per_s": a.batch * a.seq / median,
        "params": sum(p.numel() for p in model.parameters()),
        "torch": torch.__version__, "device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu",
    }))


if __name__ == "__main__":
    main()
