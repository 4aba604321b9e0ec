#!/usr/bin/env bash
# Train-step throughput and MFU of the paper AlexNet on one GPU: batch 128, 256, 512, bf16 and fp32,
# synthetic data already on the device. Six compiles and 6 x (2 warmup + 3 x 10) steps: a few minutes
# on an A100/H100-class GPU; `timeout` stops it at 10.
#
#   pip install -r requirements.txt -r requirements-cuda12.txt
#   bench/gpu.sh [results.json]        # default: bench_gpu.json, in the current directory
#
# Prints the table (see docs/benchmarks.md, "Train step") and writes every row to the JSON file.
# On GPU the model uses XLA's own cuDNN convolutions (model.conv_impl "auto" picks them there).
set -euo pipefail
out="$(realpath -m "${1:-bench_gpu.json}")"  # before the cd: relative to where it was run from
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python -c 'import jax; assert jax.default_backend() == "gpu", f"no GPU visible to JAX: {jax.devices()}"'
timeout 600 python -m bench.train_step --batch_sizes=128,256,512 --dtypes=bfloat16,float32 \
  --steps=10 --rounds=3 --json_out="$out"
echo "results: $out"
