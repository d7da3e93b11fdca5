"""Can the task head learn the synthetic set from raw pixel patches (no tower at all)?

A diagnostic for the accuracy-vs-tokens runs: the images of `vtlab.data.synthetic` are cut into the tower's
patches (16 px for smolvlm), pixel-unshuffled by `--factor`, projected by a bias-free linear layer to the text
width (as SmolVLM's connector does) and read by vtlab's attention-pool head, trained with AdamW. Without a tower
nothing is nonlinear before the head's pooling, so this shows how hard the task's signal is to pick up at a
given glyph size: if the head cannot find it in the pixels, a randomly initialised tower must first learn to.

    python experiments/training/pixel_probe.py --glyph-size 13 --out results/cpu_probe/g13.json     # CPU, ~3 min
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vtlab.data.synthetic import GlyphCount, GlyphSpec
from vtlab.models.connectors.pixel_unshuffle import pixel_unshuffle
from vtlab.models.heads import build_head


def patches(ds: GlyphCount, n: int, patch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, patches, 3 * patch * patch) pixel patches in [-1, 1] (row-major, channel-last inside a patch), labels."""
    items = [ds.raw(i) for i in range(n)]
    x = torch.stack([img for img, _ in items]).float() / 127.5 - 1
    x = x.unfold(2, patch, patch).unfold(3, patch, patch)  # (n, 3, gh, gw, p, p)
    x = x.permute(0, 2, 3, 4, 5, 1).reshape(n, x.shape[2] * x.shape[3], -1)
    return x, torch.tensor([label for _, label in items])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--patch", type=int, default=16)
    ap.add_argument("--glyph-size", type=int, default=None, help="odd; default: the data set's (5 px at 128 px)")
    ap.add_argument("--task", default="count_plus")
    ap.add_argument("--factor", type=int, default=1)
    ap.add_argument("--width", type=int, default=576, help="connector output = head width (SmolVLM: 576)")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--train-size", type=int, default=4096)
    ap.add_argument("--val-size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.set_flush_denormal(True)  # once attention sharpens, denormal exps make CPU steps ~5x slower
    spec = GlyphSpec(image_size=a.image_size, task=a.task, glyph_size=a.glyph_size)
    xt, yt = patches(GlyphCount(spec, a.train_size, "train", seed=0), a.train_size, a.patch)
    xv, yv = patches(GlyphCount(spec, a.val_size, "val", seed=0), a.val_size, a.patch)
    grid = a.image_size // a.patch
    torch.manual_seed(0)
    proj = nn.Linear(xt.shape[-1] * a.factor**2, a.width, bias=False)
    head = build_head("attention_pool", a.width, spec.num_classes)
    opt = torch.optim.AdamW([*proj.parameters(), *head.parameters()], lr=a.lr)

    def logits(x: torch.Tensor) -> torch.Tensor:
        return head(proj(pixel_unshuffle(x, (grid, grid), a.factor)))

    curve, start = [], time.time()
    for epoch in range(a.epochs):
        order = torch.randperm(a.train_size)
        for i in range(0, a.train_size, a.batch):
            idx = order[i : i + a.batch]
            loss = F.cross_entropy(logits(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            val_acc = (logits(xv).argmax(-1) == yv).float().mean().item()
        curve.append({"epoch": epoch, "step": (epoch + 1) * (a.train_size // a.batch), "val_acc": val_acc})
        print(f"epoch {epoch}: val_acc {val_acc:.3f} ({time.time() - start:.0f}s)", flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
                                 "glyph_size": spec.glyph, "curve": curve}, indent=1))


if __name__ == "__main__":
    main()
