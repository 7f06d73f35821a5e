#!/usr/bin/env python3
"""Critical path of the fused decode step, kernel by kernel, from an Nsight Systems trace.

Profile a run that decodes through `GraphDecoder`'s fused step with CUDA-graph node tracing, export it to SQLite,
and pass the database:

    nsys profile --cuda-graph-trace=node -t cuda -o prof \
        target/release/examples/speed 128 48 bf16 cuda:0      # EFFLLM_SPEED_RANDOM=1 needs no model file
    nsys export --type sqlite -o prof.sqlite prof.nsys-rep
    python3 scripts/bench/nsys_decode_steps.py prof.sqlite

A step is the kernels from `embed_*` to `finish`. With programmatic dependent launches a kernel starts before the
previous one ends and waits inside, so its duration says little; what a kernel adds to the step is the time from
the previous kernel's end to its own end ("increment"), reported here as the median over the last half of the
steps (steady state) and summed per step. Standard library only.
"""

import collections
import sqlite3
import statistics
import sys


def main(path: str) -> None:
    db = sqlite3.connect(path)
    names = dict(db.execute("select id, value from StringIds"))
    rows = db.execute("select start, end, shortName from CUPTI_ACTIVITY_KIND_KERNEL order by start").fetchall()
    steps, cur = [], None
    for start, end, name_id in rows:
        name = names[name_id]
        if name.startswith("embed_"):
            cur = [(start, end, name)]
        elif cur is not None:
            cur.append((start, end, name))
            if name == "finish":
                steps.append(cur)
                cur = None
    if not steps:
        sys.exit("no fused decode steps (embed_* ... finish) in this trace")
    print(f"{len(rows)} kernels, {len(steps)} steps of {collections.Counter(len(s) for s in steps)} kernels")
    steps = steps[len(steps) // 2:]
    increments, durations = collections.defaultdict(list), collections.defaultdict(list)
    for s in steps:
        for i, (start, end, name) in enumerate(s):
            key = name
            if name.startswith("gemv_add"):
                key += " (W_o)" if s[i - 1][2].startswith("attention") else " (W_down)"
            durations[key].append(end - start)
            increments[key].append(end - (s[i - 1][1] if i else start))
    spans = [s[-1][1] - s[0][0] for s in steps]
    print(f"step: median {statistics.median(spans) / 1e3:.1f} us from the first kernel's start to the last's end")
    if len(steps) > 1:
        gaps = [steps[i + 1][0][0] - steps[i][-1][1] for i in range(len(steps) - 1)]
        print(f"gap between steps: median {statistics.median(gaps) / 1e3:.2f} us")
    print(f"{'kernel':<28} {'per step':>8} {'duration':>9} {'increment':>10} {'sum/step':>9}   (us, medians)")
    for key, inc in increments.items():
        print(
            f"{key:<28} {len(inc) / len(steps):>8.0f} {statistics.median(durations[key]) / 1e3:>9.2f} "
            f"{statistics.median(inc) / 1e3:>10.2f} {sum(inc) / len(steps) / 1e3:>9.1f}"
        )


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
