#!/usr/bin/env bash
# Device call 2 of the 2026-12-01 (third) session, one H200: issue 15's VQA study, every cell (2000 steps), with
# model.longest_edge=64: the study renders its images at the frame size (64 px), and the SmolVLM processor's
# longest-edge resize (default 4 x frame = 256 px, LANCZOS, then back to 64) made the data path ~270 ms a batch of 64
# on one core, which is what held call 1 at 0.33 s a step with 15 processes on 16 cores; with longest_edge = frame
# both resizes are identities (Pillow returns a copy). Call 1's finished cell (blind s0) comes in call1_cells.tgz.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; } > $OUT/env.txt 2>&1
mkdir -p /tmp/vqa && tar xzf experiments/vqa_study/call1_cells.tgz -C /tmp/vqa && rm -f /tmp/vqa/train/*/csv/metrics.csv.unused
# only finished cells are kept from call 1 (a folder without results.json would be run again from scratch)
for d in /tmp/vqa/train/*/; do [ -f "$d/results.json" ] || rm -rf "$d"; done
timeout 555 python3 experiments/vqa_study/run.py --out /tmp/vqa --jobs 15 --steps 2000 --budget-s 240 \
    --set model.longest_edge=64 > /tmp/vqa_study.log 2>&1
echo "vqa done at ${SECONDS}s" >> $OUT/env.txt
cd /tmp/vqa && { tail -20 /tmp/vqa_study.log > train/study_tail.log
  find train \( -name results.json -o -name metrics.csv -o -name study_tail.log \) -print0 | tar czf $OUT/vqa_cells.tgz --null -T -
  cp results.md $OUT/vqa_results.md; cp results.json $OUT/vqa_results.json; tail -3 train/pixel_unshuffle-f1-s0/train.log > $OUT/vqa_cell_tail.log; }
echo "call wall ${SECONDS}s" >> $OUT/env.txt
