#!/usr/bin/env bash
# Device call 4 of the 2026-12-02 ninth session (what the session's device time has left), one H200, issue 16:
# 1. graph_break_probe.py: torch._dynamo.explain of the native siglip tower with the inference levers (call 2's
#    profile showed two compiled graphs per call: the patch embedding, then the residual stream);
# 2. sdpa_copy_probe.py --step llavanext: which op launches llavanext's same-dtype strided copies (11.35 ms in 30
#    calls per full-fine-tuning step; call 1 found none in the attention layer compiled alone).
set -u
LIMIT=${LIMIT:-200}
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
date -u > $OUT/env.txt
timeout 60 python3 experiments/gpu_speed/graph_break_probe.py --presets siglip --out $OUT/graph_breaks.json > $OUT/graph_breaks.log 2>&1
echo "graph breaks done at ${SECONDS}s" >> $OUT/env.txt
timeout $(( LIMIT - SECONDS - 5 )) python3 experiments/gpu_speed/sdpa_copy_probe.py --step llavanext --step-batch 64 \
    --out $OUT/step_copies.json > $OUT/step_copies.log 2>&1
echo "call wall ${SECONDS}s" >> $OUT/env.txt
