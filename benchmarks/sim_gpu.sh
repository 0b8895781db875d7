#!/usr/bin/env bash
# The simulator and the full-size policy on a GPU machine (docs/benchmarks.md, issue 11):
# physics and EGL rendering on the NVIDIA driver (benchmarks/sim.py), and the full-size SmolVLA
# chunk latency through the runner the node uses (benchmarks/inference.py: fast path on CUDA).
#   OUT=/some/dir bash benchmarks/sim_gpu.sh
set -euo pipefail
OUT=${OUT:?set OUT}
# shellcheck source=benchmarks/gpu_env.sh
source "$(dirname "$0")/gpu_env.sh"
export MUJOCO_GL=egl MUJOCO_EGL_DEVICE_ID=${MUJOCO_EGL_DEVICE_ID:-0}
# An image with only the NVIDIA vendor libraries (libEGL_nvidia) needs glvnd's dispatchers:
# carry libEGL.so.1, libOpenGL.so.0, libGLdispatch.so.0 (Debian: libegl1 libopengl0 libglvnd0)
# in .gllibs/.
if [ -d .gllibs ]; then export LD_LIBRARY_PATH=$PWD/.gllibs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}; fi
status=0
timeout "${SIM_BUDGET_S:-120}" python3 benchmarks/sim.py --device cuda --size full --skip-loop \
  --width 640 --height 480 --frames 60 --out "$OUT/sim_gpu.json" || status=$?
[ -n "${SKIP_INFERENCE:-}" ] || timeout "${INF_BUDGET_S:-300}" python3 benchmarks/inference.py --device cuda --size full \
  --out "$OUT/inference_gpu.json" || status=$?
exit $status
