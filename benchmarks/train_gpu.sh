#!/usr/bin/env bash
# benchmarks/train_gpu.py on a GPU machine without network access (the lent 2x H200 of
# docs/benchmarks.md): installs the carried cp312 wheels (.whl/, see docs/benchmarks.md),
# runs everything once and leaves summary.json and the logs (logs.tar.gz) in OUT.
#   OUT=/some/dir bash benchmarks/train_gpu.sh [extra train_gpu.py arguments]
set -euo pipefail
OUT=${OUT:?set OUT}
WORK=${WORK:-/tmp/train_gpu}
# NVLink multicast stays off (the host's GPUs are shared); no hub access.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi -L || true
if [ -z "${SKIP_WHEELS:-}" ] && compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  SITE=/tmp/site
fi
# LeRobot imports PyAV at module level; image datasets never decode video, so where PyAV is
# missing (its wheel alone is 40 MB) a stand-in module lets LeRobot import.
if ! PYTHONPATH=${SITE:-} python3 -c "import av" 2>/dev/null; then
  mkdir -p /tmp/avstub/av
  cat >/tmp/avstub/av/__init__.py <<'EOF'
"""Stand-in for PyAV: this machine trains on image datasets and never decodes video.
It holds only what LeRobot's and torchvision's imports touch."""
from types import SimpleNamespace

logging = SimpleNamespace(PANIC=0, FATAL=8, ERROR=16, WARNING=24, INFO=32, VERBOSE=40, DEBUG=48,
                          set_level=lambda level: None, restore_default_callback=lambda: None)
video = SimpleNamespace(frame=SimpleNamespace(VideoFrame=type("VideoFrame", (), {"pict_type": 0})))
FFmpegError = type("FFmpegError", (Exception,), {})
EOF
  STUB=/tmp/avstub
fi
export PYTHONPATH=${SITE:-}:${STUB:-}:$PWD${PYTHONPATH:+:$PYTHONPATH}
python3 -c "import torch, lerobot, transformers, accelerate; print('torch', torch.__version__,
  'cuda', torch.cuda.device_count(), 'lerobot', lerobot.__version__, 'transformers',
  transformers.__version__, 'accelerate', accelerate.__version__)"
status=0
# stop before the caller's limit so that the summary and logs are still copied out
timeout "${BUDGET_S:-540}" python3 benchmarks/train_gpu.py --out "$WORK" "$@" || status=$?
cp "$WORK/summary.json" "$OUT/" 2>/dev/null || true
(cd "$WORK" && tar czf "$OUT/logs.tar.gz" ./*.log ./*/train_log.jsonl ./*/validation.json \
  ./*/kuavo_train.json 2>/dev/null) || true
exit $status
