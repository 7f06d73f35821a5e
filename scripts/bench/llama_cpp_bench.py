"""llama.cpp side of effllm's SmolLM2 benchmarks (the peer every figure is divided by).

Pinned: llama-cpp-python==0.3.36 (llama.cpp built from source by pip; CMAKE_ARGS="-DGGML_NATIVE=OFF
-DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"), numpy==2.4.6. Install into a venv:

    python3 -m venv /path/venv && CMAKE_BUILD_PARALLEL_LEVEL=2 CMAKE_ARGS="..." \
        /path/venv/bin/pip install llama-cpp-python==0.3.36 numpy==2.4.6

Then point effllm at it: `EFFLLM_LLAMA_CPP_PYTHON=/path/venv/bin/python cargo xtask bench-all --only smollm2`.

Modes (each prints one JSON object on stdout):
  speed MODEL THREADS PREFILL_LENS DECODE_CTXS DECODE_TOKENS
      prefill tokens/s for each prompt length (comma-separated), and decode tokens/s after a prompt of each
      context length, generating DECODE_TOKENS greedy tokens one at a time (eval + argmax, like effllm's bench).
  ppl MODEL THREADS TOKENS_JSON CONTEXT STRIDE
      perplexity over the documents in TOKENS_JSON ([[ids], ...], as written by `effllm perplexity
      --save-tokens`), with the same sliding windows as effllm-data's `sliding_windows` (every token from the
      second on scored exactly once; windows of CONTEXT tokens advancing by STRIDE).
Prompts for the speed mode are the ids 100 + (37 i mod 20000), the same as effllm's scenario.
"""

import json
import math
import sys
import time

import llama_cpp
import numpy as np
from llama_cpp import Llama


def load(model, threads, n_ctx, logits_all):
    return Llama(model_path=model, n_ctx=n_ctx, n_batch=512, n_threads=threads, n_threads_batch=threads,
                 logits_all=logits_all, verbose=False, seed=0)


def prompt_ids(n):
    return [100 + (37 * i) % 20000 for i in range(n)]


def speed(model, threads, prefill_lens, decode_ctxs, decode_tokens):
    n_ctx = max(prefill_lens + [c + decode_tokens for c in decode_ctxs]) + 8
    llm = load(model, threads, n_ctx, False)
    out = {"prefill": {}, "decode": {}, "threads": threads}
    for n in prefill_lens:
        llm.reset()
        t = time.perf_counter()
        llm.eval(prompt_ids(n))
        out["prefill"][str(n)] = n / (time.perf_counter() - t)
    for c in decode_ctxs:
        llm.reset()
        llm.eval(prompt_ids(c))
        t = time.perf_counter()
        for _ in range(decode_tokens):
            # logits_all is off (as in generation), so read the last row straight from llama.cpp.
            last = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
            nxt = int(np.argmax(np.ctypeslib.as_array(last, shape=(llm.n_vocab(),))))
            llm.eval([nxt])
        out["decode"][str(c)] = decode_tokens / (time.perf_counter() - t)
    return out


def windows(n, max_len, stride):
    prev_end, k = 1, 0
    while n >= 2:
        end = min(max_len + k * stride, n)
        start = max(end - max_len, 0)
        yield start, end, prev_end - start
        prev_end, k = end, k + 1
        if end == n:
            break


def ppl(model, threads, tokens_json, context, stride):
    docs = json.load(open(tokens_json))
    llm = load(model, threads, context + 8, True)
    nll, scored = 0.0, 0
    t = time.perf_counter()
    for doc in docs:
        for start, end, score_from in windows(len(doc), context, stride):
            toks = doc[start:end]
            llm.reset()
            llm.eval(toks)
            logits = np.asarray(llm.scores[: len(toks)], dtype=np.float64)
            for r in range(score_from - 1, len(toks) - 1):
                row = logits[r]
                m = row.max()
                lse = m + math.log(np.exp(row - m).sum())
                nll += lse - row[toks[r + 1]]
                scored += 1
    secs = time.perf_counter() - t
    return {"perplexity": math.exp(nll / scored), "mean_nll": nll / scored, "tokens": scored,
            "tokens_per_s": scored / secs, "context": context, "stride": stride, "threads": threads}


def main(argv):
    if len(argv) >= 2 and argv[1] == "speed" and len(argv) == 7:
        ints = lambda s: [int(x) for x in s.split(",") if x]
        res = speed(argv[2], int(argv[3]), ints(argv[4]), ints(argv[5]), int(argv[6]))
    elif len(argv) >= 2 and argv[1] == "ppl" and len(argv) == 7:
        res = ppl(argv[2], int(argv[3]), argv[4], int(argv[5]), int(argv[6]))
    else:
        sys.exit(__doc__)
    res["llama_cpp_python"] = llama_cpp.__version__
    print(json.dumps(res))


if __name__ == "__main__":
    main(sys.argv)
