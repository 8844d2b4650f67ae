#!/bin/sh
# `ragd eval` on full NegConstraint per embedding runtime (bench/onnx/eval_runtime.py), one
# after the other in the order given, each in a fresh RAGD_DATA_DIR; logs and JSON in results/.
#   sh bench/onnx/run_evals.sh [SUFFIX] [RUNTIME...]   e.g. sh bench/onnx/run_evals.sh run2 onnx-int8 torch onnx
set -eu
cd "$(dirname "$0")/../.."
BEIR=${BEIR:-../shared/data/beir/negconstraint}
OUT=bench/onnx/results
PY=.venv/bin/python
suffix=${1:-}
[ $# -gt 0 ] && shift
[ $# -gt 0 ] || set -- torch onnx onnx-int8
mkdir -p "$OUT"
for rt in "$@"; do   # exports first, outside the timed runs
    RAGD_EMBEDDING_RUNTIME=$rt $PY bench/onnx/eval_runtime.py --prepare
done
for rt in "$@"; do
    name=$rt${suffix:+.$suffix}
    data=$(mktemp -d /tmp/ragd-eval-data.XXXXXX)
    echo "== $name $(date +%T) $(uptime)" | tee -a "$OUT/evals.log"
    RAGD_EMBEDDING_RUNTIME=$rt RAGD_DATA_DIR=$data \
        $PY bench/onnx/eval_runtime.py --beir "$BEIR" --json "$OUT/$name.json" \
        >"$OUT/$name.log" 2>&1
    echo "   done $(date +%T) $(uptime)" | tee -a "$OUT/evals.log"
    rm -rf "$data"
done
