#!/usr/bin/env bash
# One short GPU session: the CUDA tests, the ViT-B/16 scoring benchmark at N = 32, and ViLT-B (3129
# answers) at N = 4 on every kernel.
# Usage: bash benchmarks/gpu_check.sh [output folder]   (needs a CUDA build of torch and `pip install -e ".[test,peft]"`)
# Writes the pytest log, the benchmark logs and benchmarks/results/ntk_cuda.json and
# benchmarks/results/ntk_hf_vilt_b_cuda.json (also copied to the folder).
set -uo pipefail
out="${1:-gpu-check}"
mkdir -p "$out"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())" | tee "$out/device.txt"
python -m pytest -q tests/ntk/test_cuda.py 2>&1 | tee "$out/test_cuda.log"
# The tutorial recipe holds every Jacobian (about 115 GB for ViT-B at N = 32): on an 80 GB card it is
# reported as out of memory, not run.
python benchmarks/bench_ntk.py --device cuda --model vit_base --n 32 \
    --methods auto persample factored --repeats 3 --warmup 1 --slow 60 2>&1 | tee "$out/bench_ntk_cuda.log"
cp benchmarks/results/ntk_cuda.json "$out/" 2>/dev/null || true
python benchmarks/bench_ntk.py --device cuda --model vilt_b --n 4 --kernels loss sum output \
    --repeats 2 --warmup 1 --slow 30 2>&1 | tee "$out/bench_ntk_vilt_cuda.log"
cp benchmarks/results/ntk_hf_vilt_b_cuda.json "$out/" 2>/dev/null || true
