#!/usr/bin/env python3
"""galore-torch baseline for the `galore` crate's optimizer-step time (docs/galore.md, issue 6).

Times `GaLoreAdamW` (galore-torch==1.0, `galore_torch/adamw.py`) over the parameter shapes of effllm-train's Llama
presets, the same shapes, rank, gap and scale as `cargo run --release -p galore --features cuda --example
step_speed`:

- parameters (float32): the tied embedding [49152, d]; per layer attn_norm [d], wq [H*hd, d], wk / wv
  [Hkv*hd, d], wo [d, H*hd], ffn_norm [d], gate / up [ff, d], down [d, ff]; the final norm [d];
- GaLore (proj_type "std", rank d/4, update_proj_gap T = 200, scale 0.25) on the attention and FFN matrices, the
  embedding and norms in a plain group, galore-torch's defaults otherwise (lr 1e-3, eps 1e-6, weight decay 0,
  correct_bias) — the paper's setup;
- fixed seeded normal gradients, set once (values do not change the cost).

Every `optimizer.step()` is timed between two `torch.cuda.synchronize()` calls. Step 0 (state allocation plus the
first SVDs) is reported alone; the others are split into refresh steps (galore-torch runs `torch.linalg.svd` on
the GPU) and ordinary steps. A baseline arm runs the same optimizer with every parameter in the plain group (HF
AdamW). Prints one JSON object per (preset, arm) per line, with the keys of the Rust example's JSON lines.

galore_torch/__init__.py imports bitsandbytes and transformers; this script loads only `galore_projector.py` and
`adamw.py` (as scripts/fixtures/galore_torch.py does), with a checked stand-in for the one transformers call
(`require_version("torch>=1.5.0")`) when transformers is missing. Get the files (no network is needed after):

    python3 -m pip download --no-deps galore-torch==1.0 -d /tmp/galore-dl
    python3 -m zipfile -e /tmp/galore-dl/galore_torch-1.0-py3-none-any.whl /tmp/galore-dl/unz

Run:

    python3 scripts/bench/galore_torch_step.py --galore-dir /tmp/galore-dl/unz/galore_torch --device cuda

Tested with torch 2.11 (the GPU machines' version); `--device cpu` works too (slowly) for a dry run.
"""

import argparse
import hashlib
import importlib
import importlib.util
import json
import os
import statistics
import sys
import time
import types

import torch

VOCAB = 49152
# effllm-train's presets (crates/effllm-train/src/config.rs): layers, d, heads, kv heads, ffn width.
PRESETS = {
    "cpu-small": dict(layers=4, d=256, heads=4, kv_heads=4, ff=768),
    "gpu-medium": dict(layers=8, d=512, heads=8, kv_heads=8, ff=1536),
}


def load_galore(galore_dir):
    """galore_torch.adamw.AdamW (exported as GaLoreAdamW) without running the package's __init__.py."""
    if galore_dir is None:
        spec = importlib.util.find_spec("galore_torch")  # does not execute __init__.py
        if spec is None or not spec.submodule_search_locations:
            sys.exit("galore_torch not found: pass --galore-dir DIR (the unzipped galore_torch/ of galore-torch==1.0)")
        galore_dir = list(spec.submodule_search_locations)[0]
    galore_dir = os.path.abspath(galore_dir)
    for f in ("galore_projector.py", "adamw.py"):
        if not os.path.isfile(os.path.join(galore_dir, f)):
            sys.exit(f"{galore_dir} has no {f}")
    try:
        import transformers.utils.versions  # noqa: F401
    except ImportError:

        def require_version(req: str, hint=None) -> None:
            assert req == "torch>=1.5.0", req
            major, minor = (int(x) for x in torch.__version__.split(".")[:2])
            assert (major, minor) >= (1, 5), torch.__version__

        tf = types.ModuleType("transformers")
        tf_utils = types.ModuleType("transformers.utils")
        tf_versions = types.ModuleType("transformers.utils.versions")
        tf_versions.require_version = require_version
        tf.utils = tf_utils
        tf_utils.versions = tf_versions
        sys.modules.update(
            {"transformers": tf, "transformers.utils": tf_utils, "transformers.utils.versions": tf_versions}
        )
    pkg = types.ModuleType("galore_torch")
    pkg.__path__ = [galore_dir]
    sys.modules["galore_torch"] = pkg
    adamw = importlib.import_module("galore_torch.adamw")
    digests = {}
    for f in ("galore_projector.py", "adamw.py"):
        with open(os.path.join(galore_dir, f), "rb") as fh:
            digests[f] = hashlib.sha256(fh.read()).hexdigest()
    return adamw.AdamW, digests


def named_shapes(p):
    """(name, shape, is_galore_target) in effllm-model's `named_parameters` order."""
    d, hd = p["d"], p["d"] // p["heads"]
    out = [("embedding", (VOCAB, d), False)]
    for i in range(p["layers"]):
        out.append((f"layers.{i}.attn_norm", (d,), False))
        out.append((f"layers.{i}.wq", (p["heads"] * hd, d), True))
        out.append((f"layers.{i}.wk", (p["kv_heads"] * hd, d), True))
        out.append((f"layers.{i}.wv", (p["kv_heads"] * hd, d), True))
        out.append((f"layers.{i}.wo", (d, p["heads"] * hd), True))
        out.append((f"layers.{i}.ffn_norm", (d,), False))
        out.append((f"layers.{i}.ffn.gate", (p["ff"], d), True))
        out.append((f"layers.{i}.ffn.up", (p["ff"], d), True))
        out.append((f"layers.{i}.ffn.down", (d, p["ff"]), True))
    out.append(("norm", (d,), False))
    return out


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def mean(xs):
    return sum(xs) / len(xs) if xs else None


def run_arm(GaLoreAdamW, preset, device, galore, args):
    p = PRESETS[preset]
    rank = args.rank or p["d"] // 4
    shapes = named_shapes(p)
    gen = torch.Generator(device="cpu").manual_seed(0)
    params, targets = [], []
    for i, (_, shape, target) in enumerate(shapes):
        w = torch.nn.Parameter(torch.randn(shape, generator=gen, dtype=torch.float32).mul_(0.02).to(device))
        g = torch.Generator(device="cpu").manual_seed(42 + i)
        w.grad = torch.randn(shape, generator=g, dtype=torch.float32).to(device)
        params.append(w)
        targets.append(target and galore)
    regular = [w for w, t in zip(params, targets) if not t]
    projected = [w for w, t in zip(params, targets) if t]
    groups = [{"params": regular}]
    if projected:
        groups.append(
            {"params": projected, "rank": rank, "update_proj_gap": args.gap, "scale": args.scale, "proj_type": "std"}
        )
    opt = GaLoreAdamW(groups, lr=1e-3, weight_decay=0.0, no_deprecation_warning=True)
    steps = (args.steps or 2 * args.gap + 1) if galore else args.adamw_steps
    times = []
    for s in range(steps):
        sync(device)
        t0 = time.perf_counter()
        opt.step()
        sync(device)
        # galore-torch's projector recomputes its basis at per-parameter steps 0, T, 2T, ... (state["step"] before
        # the increment), the same steps for every matrix here.
        times.append((1e3 * (time.perf_counter() - t0), galore and s % args.gap == 0))
    first = times[0][0] if times else None
    rest = times[1:]
    plain = [t for t, r in rest if not r]
    refresh = [t for t, r in rest if r]
    pm, rm = mean(plain), mean(refresh)
    if galore:
        amortized = ((args.gap - 1) * pm + rm) / args.gap if pm is not None and rm is not None else None
    else:
        amortized = pm
    # Bases computed: at steps 0, T, 2T, ... below `steps`, once per GaLore matrix.
    svds = ((steps - 1) // args.gap + 1) * len(projected) if galore and steps else 0
    state_bytes = 0
    for st in opt.state.values():
        for k, v in st.items():
            if torch.is_tensor(v) and k in ("exp_avg", "exp_avg_sq"):
                state_bytes += v.numel() * v.element_size()
            elif k == "projector" and getattr(v, "ortho_matrix", None) is not None:
                o = v.ortho_matrix
                state_bytes += o.numel() * o.element_size()
    return {
        "impl": "galore-torch",
        "preset": preset,
        "device": str(device),
        "optimizer": "GaLoreAdamW" if galore else "AdamW",
        "rank": rank if galore else None,
        "update_proj_gap": args.gap,
        "scale": args.scale,
        "params": sum(w.numel() for w in params),
        "tensors": len(params),
        "galore_matrices": len(projected),
        "galore_elements": sum(w.numel() for w in projected),
        "steps": steps,
        "first_step_ms": first,
        "step_ms_mean": pm,
        "step_ms_median": statistics.median(plain) if plain else None,
        "ordinary_steps": len(plain),
        "refresh_ms_mean": rm,
        "refresh_steps": len(refresh),
        "amortized_ms": amortized,
        "svd_count": svds,
        "state_bytes": state_bytes,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--galore-dir", default=os.environ.get("GALORE_TORCH_DIR"))
    ap.add_argument("--preset", action="append", choices=sorted(PRESETS), help="repeatable; default: both")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=None, help="GaLore steps (default 2T + 1)")
    ap.add_argument("--gap", type=int, default=200, help="update_proj_gap T")
    ap.add_argument("--rank", type=int, default=None, help="default d/4")
    ap.add_argument("--scale", type=float, default=0.25)
    ap.add_argument("--adamw-steps", type=int, default=50, help="steps of the no-projection baseline")
    args = ap.parse_args()
    GaLoreAdamW, digests = load_galore(args.galore_dir)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # effllm's CUDA matmuls are plain f32 unless asked
    for preset in args.preset or ["cpu-small", "gpu-medium"]:
        for galore in (False, True):
            rec = run_arm(GaLoreAdamW, preset, device, galore, args)
            rec["torch"] = torch.__version__
            rec["gpu"] = torch.cuda.get_device_name(device) if device.type == "cuda" else None
            rec["reference_sha256"] = digests
            print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    main()
