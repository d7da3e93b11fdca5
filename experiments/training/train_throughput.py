"""Training-step throughput (images/s): vtlab's native SigLIP stack vs transformers' SiglipVisionModel.

Question: what does one optimizer step of tower + connector + attention-pool head cost with vtlab's native
tower, compared with the same architecture built from transformers' `SiglipVisionModel` (SDPA), in one
harness: same connector, head, AdamW (fused on CUDA), gradient clipping, bf16 autocast (Lightning's
bf16-mixed), with and without in-place `torch.compile` of tower and connector (what `task.compile=true` does)?

Inputs are random tensors already on the device, so data loading is excluded. For every variant the script
times `--steps` steps after `--warmup` steps (compilation happens there), synchronising the device, and
records images/s, ms/step, peak memory and warm-up (compile) time. Writes `results.json`, `results.md` and
`throughput.png` to `--out`.

GPU (H100):  python experiments/training/train_throughput.py --out experiments/training/results/throughput
CPU smoke:   python experiments/training/train_throughput.py --model smolvlm_debug --device cpu \
                 --precision 32-true --batch 4 --steps 2 --warmup 1 --out /tmp/tp
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # hf_tower.py beside this file

from vtlab.api import compose_config, to_config  # noqa: E402
from vtlab.models.connectors import build_connector  # noqa: E402
from vtlab.models.sdpa import check_backend, pinned  # noqa: E402
from vtlab.models.stack import VisionStack  # noqa: E402
from vtlab.models.towers import build_tower  # noqa: E402
from vtlab.train.module import OptimSettings, VisionClassifier  # noqa: E402


def build_classifier(tower_kind: str, cfg, freeze: str, num_classes: int) -> VisionClassifier:
    if tower_kind == "native":
        tower = build_tower(cfg.model)
    else:
        from hf_tower import HFSiglipTower

        tower = HFSiglipTower(cfg.model)
    connector = build_connector(cfg.connector, in_dim=tower.feature_dim, out_dim=cfg.text_hidden)
    stack = VisionStack(tower, connector, input_size=cfg.model.input_size)
    return VisionClassifier(stack, num_classes, freeze=freeze, optim=OptimSettings(lr=1e-4, tower_lr=1e-5))


def measure(lit: VisionClassifier, args, device: torch.device) -> dict:
    lit = lit.to(device).train()
    size = lit.stack.input_size
    x = torch.randn(args.batch, 3, size, size, device=device)
    y = torch.randint(0, args.classes, (args.batch,), device=device)
    groups = lit.param_groups()
    opt = torch.optim.AdamW(groups, fused=device.type == "cuda" or None)
    bf16 = args.precision == "bf16-mixed"

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss, _ = lit.loss_and_logits((x, y))
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync()
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        step()
    sync()
    warm_s = time.perf_counter() - t0
    times = []
    for _ in range(args.repeats):
        sync()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        sync()
        times.append(time.perf_counter() - t0)
    best = sorted(times)[len(times) // 2]  # median repeat
    return {
        "images_per_s": args.batch * args.steps / best,
        "ms_per_step": 1000 * best / args.steps,
        "warmup_s": warm_s,
        "peak_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        "trainable_params": sum(lit.trainable_parameters().values()),
    }


def write_outputs(rows: list[dict], meta: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    base = {(r["tower"], r["mode"]): r["images_per_s"] for r in rows if r.get("images_per_s")}
    lines = [
        f"# Training-step throughput: {meta['model']} (factor {meta['factor']}, {meta['tokens']} tokens), "
        f"batch {meta['batch']}, {meta['precision']}, freeze={meta['freeze']}, "
        f"SDPA {meta.get('attention_backend', 'auto')}",
        "",
        f"device: {meta['device_name']}; torch {meta['torch']}; transformers {meta['transformers']}",
        "",
        "| tower | mode | images/s | ms/step | vs transformers (same mode) | warm-up s | peak MiB |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r.get("error"):
            lines.append(f"| {r['tower']} | {r['mode']} | error: {r['error'][:80]} | | | | |")
            continue
        ref = base.get(("transformers", r["mode"]))
        ratio = f"{r['images_per_s'] / ref:.2f}x" if ref else "-"
        mem = f"{r['peak_memory_mb']:.0f}" if r["peak_memory_mb"] else "-"
        lines.append(f"| {r['tower']} | {r['mode']} | {r['images_per_s']:.1f} | {r['ms_per_step']:.1f} | {ratio} | "
                     f"{r['warmup_s']:.1f} | {mem} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r.get("images_per_s")]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    labels = [f"{r['tower']}\n{r['mode']}" for r in ok]
    colors = ["tab:blue" if r["tower"] == "vtlab" else "tab:gray" for r in ok]
    bars = ax.bar(labels, [r["images_per_s"] for r in ok], color=colors)
    ax.bar_label(bars, fmt="%.0f")
    ax.set_ylabel("training images / s")
    ax.set_title(f"{meta['model']} f{meta['factor']} train step, {meta['precision']}, batch {meta['batch']}\n"
                 f"{meta['device_name']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=150)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smolvlm")
    ap.add_argument("--override", action="append", default=[], help="extra Hydra override, e.g. connector.factor=2")
    ap.add_argument("--towers", default="vtlab,transformers")
    ap.add_argument("--modes", default="eager,compile")
    ap.add_argument("--freeze", default="none", choices=["none", "tower", "stack"])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--classes", type=int, default=4)
    ap.add_argument("--precision", default="bf16-mixed", choices=["bf16-mixed", "32-true"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--attention-backend", default="auto",
                    help="SDPA kernels during the steps: auto (PyTorch's choice) or as task.attention_backend, "
                         "e.g. no_cudnn (the train task's default)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    device = torch.device(args.device)
    check_backend(args.attention_backend, device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    cfg = to_config(compose_config(args.model, args.override))
    rows = []
    for tower_name in args.towers.split(","):
        for mode in args.modes.split(","):
            torch.manual_seed(0)
            kind = "native" if tower_name == "vtlab" else "hf"
            lit = build_classifier(kind, cfg, args.freeze, args.classes)
            if mode == "compile":
                lit.compile_stack()
            print(f"-- {tower_name} {mode} ...", flush=True)
            try:
                with pinned(args.attention_backend):
                    row = {"tower": tower_name, "mode": mode, **measure(lit, args, device)}
            except Exception as exc:  # keep the other variants (e.g. a compile failure in one tower)
                row = {"tower": tower_name, "mode": mode, "error": f"{exc.__class__.__name__}: {exc}"}
            print(row, flush=True)
            rows.append(row)
            del lit
            torch._dynamo.reset()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    import transformers

    probe = build_classifier("native", cfg, args.freeze, args.classes).stack
    meta = {
        "model": args.model, "overrides": args.override, "factor": cfg.connector.factor, "tokens": probe.num_tokens,
        "input_size": probe.input_size, "batch": args.batch, "steps": args.steps, "warmup": args.warmup,
        "repeats": args.repeats, "precision": args.precision, "freeze": args.freeze,
        "attention_backend": args.attention_backend,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "transformers": transformers.__version__,
    }
    write_outputs(rows, meta, args.out)


if __name__ == "__main__":
    main()
