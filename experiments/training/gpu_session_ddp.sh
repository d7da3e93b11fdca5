#!/usr/bin/env bash
# Issue-5 multi-GPU session 5 (one call of the device tool on a 2-GPU host, ~5 min): DDP scaling of the smolvlm
# stack at 512 px, measured with nothing else on the host (unlike run 1, where a 1-GPU job and 24 data workers
# shared it), for full fine-tuning (task.freeze=none, the step that matters) and for the train task's default
# (task.freeze=tower), each as one job on GPU 0 and then as trainer=ddp on GPUs 0 and 1; then the training-step
# throughput harness in eager mode (section 1 timed compile only). Results are tarred into $OUT/results.tgz.
# Usage on the host (after installing the hydra/omegaconf wheels):  OUT=/tmp/out bash gpu_session_ddp.sh
# CPU dry run of the plumbing:  SMOKE=1 OUT=/tmp/out bash experiments/training/gpu_session_ddp.sh
# shellcheck source=session_env.sh
source "$(dirname "$0")/session_env.sh"
MODEL=smolvlm
SETS=(logger=csv data.task=count_plus data.train_size=8192 data.val_size=1024 data.num_workers=12 task.batch_size=64
      task.compile=false trainer.max_epochs=1 task.lr=1e-4 task.tower_lr=1e-4)
ONE=(trainer.devices=1)
TWO=(trainer=ddp trainer.devices=2)
TP=(--batch 64 --steps 10 --warmup 3 --repeats 2 --modes eager)
if [ -n "${SMOKE:-}" ]; then
  MODEL=smolvlm_debug
  SETS=(logger=csv data.train_size=32 data.val_size=16 data.num_workers=0 task.batch_size=8 trainer.max_epochs=1
        trainer.accelerator=cpu)
  TWO=(trainer=ddp trainer.devices=2 trainer.accelerator=cpu)
  TP=(--model smolvlm_debug --device cpu --precision 32-true --batch 4 --steps 2 --warmup 1 --repeats 1 --modes eager)
fi
nvidia-smi --query-gpu=index,name,memory.total --format=csv > "$W/gpus.csv" 2>/dev/null
"$PY" -c "import torch, lightning, transformers; print('torch', torch.__version__, 'lightning', lightning.__version__, 'transformers', transformers.__version__)" > "$W/versions.txt"
t0=$(date +%s)
cd "$W"
for freeze in none tower; do
  CUDA_VISIBLE_DEVICES=0 "$PY" -m vtlab +model=$MODEL task=train "${SETS[@]}" "${ONE[@]}" task.freeze=$freeze \
    out_dir="$W/freeze_$freeze/gpu1" > "$W/freeze_${freeze}_gpu1.log" 2>&1
  echo "freeze=$freeze 1 GPU rc=$? $(( $(date +%s) - t0 ))s" >> "$W/timeline.txt"
  CUDA_VISIBLE_DEVICES=0,1 "$PY" -m vtlab +model=$MODEL task=train "${SETS[@]}" "${TWO[@]}" task.freeze=$freeze \
    out_dir="$W/freeze_$freeze/ddp2" > "$W/freeze_${freeze}_ddp2.log" 2>&1
  echo "freeze=$freeze DDP 2 GPUs rc=$? $(( $(date +%s) - t0 ))s" >> "$W/timeline.txt"
done
CUDA_VISIBLE_DEVICES=0 "$PY" "$R/experiments/training/train_throughput.py" "${TP[@]}" --out "$W/throughput_eager" \
  > "$W/throughput_eager.log" 2>&1
echo "throughput eager rc=$? $(( $(date +%s) - t0 ))s" >> "$W/timeline.txt"
(cd "$W" && tar czf "$OUT/results.tgz" --exclude='*.ckpt' --exclude='checkpoints' .)
cat "$W/timeline.txt"
"$PY" - "$W" <<'PY'
import json, pathlib, sys
for p in sorted(pathlib.Path(sys.argv[1]).glob("freeze_*/*/results.json")):
    r = json.loads(p.read_text())
    print(p.parent.parent.name, p.parent.name, "world", r.get("world_size"), "steps", r.get("global_step"),
          "train img/s", r.get("train_images_per_s"), "val img/s", r.get("val_images_per_s"), "fit s", r.get("fit_s"))
PY
grep '^|' "$W/throughput_eager/results.md" 2>/dev/null
