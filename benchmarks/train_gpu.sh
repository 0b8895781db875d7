#!/usr/bin/env bash
# benchmarks/train_gpu.py on a GPU machine without network access (the lent 2x H200 of
# docs/benchmarks.md): installs the carried cp312 wheels (.whl/, see docs/benchmarks.md),
# runs everything once and leaves summary.json and the logs (logs.tar.gz) in OUT.
#   OUT=/some/dir bash benchmarks/train_gpu.sh [extra train_gpu.py arguments]
set -euo pipefail
OUT=${OUT:?set OUT}
WORK=${WORK:-/tmp/train_gpu}
# NVLink multicast stays off (the host's GPUs are shared); no hub access.
# shellcheck source=benchmarks/gpu_env.sh
source "$(dirname "$0")/gpu_env.sh"
status=0
# stop before the caller's limit so that the summary and logs are still copied out
timeout "${BUDGET_S:-540}" python3 benchmarks/train_gpu.py --out "$WORK" "$@" || status=$?
cp "$WORK/summary.json" "$OUT/" 2>/dev/null || true
(cd "$WORK" && tar czf "$OUT/logs.tar.gz" ./*.log ./*.json ./*/train_log.jsonl \
  ./*/validation.json ./*/kuavo_train.json ./*/profile_rank* 2>/dev/null) || true
exit $status
