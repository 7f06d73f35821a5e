#!/usr/bin/env bash
# Extracts the CUDA C source of crates/megalodon/src/cuda.rs, compiles it as C++ with host stand-ins for the CUDA
# built-ins, and runs emulate.cpp (each kernel vs naive formulas). Needs python3 and g++.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 - "$root/crates/megalodon/src/cuda.rs" "$work/mega_kernels.h" <<'PY'
import sys
s = open(sys.argv[1]).read()
a = s.index('const SOURCE: &str = r#"') + len('const SOURCE: &str = r#"')
b = s.index('"#;', a)
pre = """#include <math.h>
#define __global__
struct D3 { unsigned int x, y, z; };
static D3 blockIdx, threadIdx, blockDim;
static inline unsigned int min(unsigned int a, unsigned int b) { return a < b ? a : b; }
"""
open(sys.argv[2], "w").write(pre + s[a:b])
PY
g++ -O1 -std=c++17 -w -I "$work" -o "$work/emulate" "$here/emulate.cpp"
"$work/emulate"
