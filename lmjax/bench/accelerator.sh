#!/usr/bin/env bash
# On a machine with a GPU or TPU, from the repo root:   bash lmjax/bench/accelerator.sh
#
# In under 10 minutes on one H100/H200: the model, HF-parity, FLOP-count and single-device
# equality tests on the accelerator, then `lmjax bench train` for gpt2_small (seq 1024, bf16,
# cuDNN attention) and bert_base (seq 128 and 512, bf16), each printing tokens/s and MFU against
# the device's datasheet bf16 peak (lmjax/training/flops.py PEAK_FLOPS). Not yet run on a GPU:
# no accelerator has been lent to this project's sessions so far (README "Speed").
set -euo pipefail
cd "$(dirname "$0")/../.."

python - <<'PY'
import jax
d = jax.devices()[0]
if d.platform == "cpu":
  raise SystemExit("accelerator.sh: JAX sees only the CPU; run it where a GPU or TPU is visible")
print(f"devices: {jax.device_count()} x {d.device_kind}")
PY

# Tests on the device (conftest keeps the CPU unless told otherwise); the multi-device modes
# need 8 devices and stay with the CPU suite.
LMJAX_TEST_ON_DEVICE=1 timeout 360 python -m pytest -q -x -p no:cacheprovider \
  tests/test_models.py tests/test_convert.py tests/test_flops.py tests/test_objectives.py \
  tests/test_parallel.py -k "not pmap and not mesh"

run() { echo "+ lmjax bench train $*"; timeout 120 python -m lmjax bench train "$@" --steps 20; }
run --config experiments/gpt2_small.py --config.data.batch_size=16
run --config experiments/bert_base.py --config.data.batch_size=128
run --config experiments/bert_base.py --config.data.batch_size=32 --config.data.seq_len=512 \
    --config.objective.max_predictions=80
