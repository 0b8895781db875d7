# Sourced by the GPU benchmark scripts on a machine without network access (the lent H200s of
# docs/benchmarks.md): installs the carried cp312 wheels (.whl/: lerobot 0.4.4, transformers
# 4.57, huggingface-hub < 0.36, rosbags, mujoco 4.0.0 and their small deps) into /tmp/site and
# puts them, a PyAV stand-in where PyAV is missing, and this checkout on PYTHONPATH.
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
