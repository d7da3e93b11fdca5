"""`VisionClassifier`: the thin LightningModule behind `task=train|eval` (VisionStack + task head).

- freeze: `tower` trains connector + head (default), `stack` trains the head only, `none` fine-tunes all.
  Modules the tower never runs (`tower.inactive_modules()`: blocks past the deepest tap, the MAP head) are
  always frozen, so DDP sees no parameter without a gradient.
- AdamW (fused on CUDA) with two learning rates (tower vs connector + head), no weight decay on biases,
  norms and position/probe tables; linear warm-up then cosine decay, stepped per optimizer step.
  Gradient clipping is done by `configure_gradient_clipping` (Lightning's plugin refuses fused optimizers).
  `compile_optimizer=True` (`task.compile_optimizer`) instead builds a foreach AdamW with tensor learning rates
  (capturable on CUDA, so the scheduler's lr changes cause no recompile) and runs its step through
  `torch.compile` (`compile_optimizer_step`): Inductor fuses the update into a few kernels, as the fused
  kernel does, and may fuse more; kept opt-in until an H200 run shows which is faster.
- `compile_stack()` compiles `stack.tower` and `stack.connector` in place (`nn.Module.compile`) exactly once:
  state_dict keys stay free of `_orig_mod.`, and validation runs the same compiled modules.
- A non-finite training loss stops the run with `NonFiniteLossError` before the optimizer step, so
  checkpoints written earlier stay intact.
- Checkpoints carry `vtlab_arch` (the architecture fields of the config; vtlab.train.checkpoint compares them
  with the current config and lists the fields that differ).
"""

from __future__ import annotations

import math
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn

from vtlab.config.schema import Freeze
from vtlab.errors import ConfigError, NonFiniteLossError
from vtlab.models.heads import build_head
from vtlab.models.stack import VisionStack


@dataclass
class OptimSettings:
    lr: float = 1e-3  # connector (+ head)
    tower_lr: float = 1e-5
    lm_lr: float = 1e-4  # the LM (vtlab.train.vlm_module)
    weight_decay: float = 0.05
    warmup_steps: int = 20
    min_lr_ratio: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float = 0.0) -> float:
    """LR multiplier: linear from 1/warmup to 1 over `warmup` steps, then cosine down to `min_ratio` at the
    last of the `total` optimizer steps (step `total - 1`)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - 1 - warmup)
    progress = min(1.0, (step - warmup) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def compile_optimizer_step(opt: torch.optim.Optimizer, **compile_kwargs: Any) -> torch.optim.Optimizer:
    """Route `opt.step(closure)` through a compiled, closure-free step (in place): the closure (Lightning's
    forward + backward + clipping) runs eagerly first, then the compiled parameter update."""
    plain_step = opt.step
    compiled = torch.compile(lambda: plain_step(), **compile_kwargs)

    def step(self: torch.optim.Optimizer, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        compiled()
        return loss

    opt.step = types.MethodType(step, opt)  # bound, as LR schedulers expect of optimizer.step
    return opt


def adamw(groups: list[dict[str, Any]], betas: tuple[float, float], compiled: bool) -> torch.optim.Optimizer:
    """AdamW: fused on CUDA (no grad scaler in play), or foreach with a compiled step (`compiled`)."""
    params = [p for g in groups for p in g["params"]]
    cuda = bool(params) and all(p.is_cuda for p in params)
    if not compiled:
        return torch.optim.AdamW(groups, betas=betas, fused=cuda or None)
    if cuda:  # tensor lrs: the scheduler fills them in place, the compiled step never recompiles for a new lr
        groups = [{**g, "lr": torch.tensor(float(g["lr"]), device=params[0].device)} for g in groups]
    opt = torch.optim.AdamW(groups, betas=betas, foreach=True, capturable=cuda)
    return compile_optimizer_step(opt)


class OptimizedModule(pl.LightningModule):
    """What every vtlab training module shares: AdamW over `param_groups()` with the warm-up-cosine schedule,
    gradient clipping that works with fused AdamW, and the non-finite-loss stop. Subclasses set `self.optim`
    (OptimSettings) and `self.compile_optimizer`, and define `param_groups()` and `lr_hint()`."""

    optim: OptimSettings
    compile_optimizer: bool = False

    def param_groups(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def lr_hint(self) -> str:
        """The learning rates a non-finite loss message suggests lowering."""
        return f"task.lr (now {self.optim.lr}) or task.tower_lr (now {self.optim.tower_lr})"

    def check_finite(self, loss: torch.Tensor) -> torch.Tensor:
        """NonFiniteLossError before the optimizer step (earlier checkpoints stay intact)."""
        if not torch.isfinite(loss.detach()):
            raise NonFiniteLossError(self._nan_message(float(loss.detach())))
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        scaler = getattr(getattr(self._trainer, "precision_plugin", None), "scaler", None) is not None
        if scaler and not self.compile_optimizer:  # fp16 with a grad scaler: the plain (unfused) AdamW
            opt = torch.optim.AdamW(self.param_groups(), betas=self.optim.betas)
        else:
            opt = adamw(self.param_groups(), self.optim.betas, compiled=self.compile_optimizer)
        total = int(self.trainer.estimated_stepping_batches) if self._trainer is not None else 1000
        o = self.optim
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: warmup_cosine(step, o.warmup_steps, total, o.min_lr_ratio)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    def configure_gradient_clipping(
        self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip directly with torch: Lightning's AMP plugin refuses any clipping for a fused optimizer, even
        under bf16-mixed where no grad scaler exists and the gradients are already at true scale."""
        if not gradient_clip_val:
            return
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        if scaler is not None:  # fp16 with a scaler: let Lightning unscale first (fused is not used there)
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
            return
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if gradient_clip_algorithm == "value":
            torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
        else:
            torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)

    def _nan_message(self, value: float) -> str:
        where = f"step {self.global_step} (epoch {self.current_epoch})"
        saved = "no checkpoint was written before it"
        cb = getattr(self._trainer, "checkpoint_callback", None) if self._trainer is not None else None
        if cb is not None and getattr(cb, "dirpath", None):
            files = sorted(p.name for p in Path(cb.dirpath).glob("*.ckpt"))
            if files:
                saved = f"checkpoints written before it are intact in {cb.dirpath}: {', '.join(files)}"
        return (
            f"training loss is {value} at {where}; the run stopped before the optimizer step, {saved}. "
            f"Lower {self.lr_hint()}, keep "
            "trainer.gradient_clip_val set, or check the data for broken images"
        )


class VisionClassifier(OptimizedModule):
    def __init__(
        self,
        stack: VisionStack,
        num_classes: int,
        head: str = "attention_pool",
        freeze: str = "tower",
        optim: OptimSettings | None = None,
        arch: dict[str, Any] | None = None,
        compile_optimizer: bool = False,
    ) -> None:
        super().__init__()
        if str(freeze) not in Freeze.__members__:  # the schema refuses it up front; this guards direct use
            raise ConfigError(f"task.freeze={str(freeze)!r} is unknown; valid: {', '.join(Freeze.__members__)}")
        self.stack = stack
        self.head = build_head(head, stack.text_hidden, num_classes)
        self.num_classes = num_classes
        self.freeze = str(freeze)
        self.optim = optim or OptimSettings()
        self.arch = arch or {}
        self._compiled = False
        self.compile_optimizer = compile_optimizer
        self.apply_freeze()

    # ------------------------------------------------------------------ parameters
    def apply_freeze(self) -> None:
        frozen: list[nn.Module] = list(self.stack.tower.inactive_modules())
        if self.freeze in ("tower", "stack"):
            frozen.append(self.stack.tower)
        if self.freeze == "stack":
            frozen.append(self.stack.connector)
        for module in frozen:
            module.requires_grad_(False)

    def trainable_parameters(self) -> dict[str, int]:
        count = lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad)  # noqa: E731
        return {"tower": count(self.stack.tower), "connector": count(self.stack.connector), "head": count(self.head)}

    def param_groups(self) -> list[dict[str, Any]]:
        """AdamW groups: (tower | rest) x (decay | no decay); empty groups are left out. Biases, norms and the
        tables the tower declares (`no_weight_decay()`: positions, the MAP probe) and head probes do not decay."""
        o = self.optim
        tower_names = {f"stack.tower.{n}" for n in self.stack.tower.no_weight_decay()}
        groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            part = "tower" if name.startswith("stack.tower.") else "rest"
            decay = p.ndim >= 2 and name not in tower_names and not name.endswith(".probe")
            groups.setdefault((part, decay), []).append(p)
        out = []
        for (part, decay), params in sorted(groups.items()):
            lr = o.tower_lr if part == "tower" else o.lr
            out.append({"params": params, "lr": lr, "weight_decay": o.weight_decay if decay else 0.0,
                        "name": f"{part}{'' if decay else '_no_decay'}"})
        return out

    # ------------------------------------------------------------------ compile
    def compile_stack(self, **kwargs: Any) -> None:
        """Compile tower and connector in place, once (a second call is a no-op)."""
        if self._compiled:
            return
        self.stack.tower.compile(**kwargs)
        self.stack.connector.compile(**kwargs)
        self._compiled = True

    # ------------------------------------------------------------------ forward
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        tokens = self.stack(pixel_values, train_tower=self.freeze == "none", train_connector=self.freeze != "stack")
        return self.head(tokens).float()

    def loss_and_logits(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        pixels, labels = batch
        logits = self(pixels)
        return F.cross_entropy(logits, labels), logits

    def _shared_step(self, batch: tuple[torch.Tensor, torch.Tensor], split: str) -> torch.Tensor:
        loss, logits = self.loss_and_logits(batch)
        acc = (logits.argmax(-1) == batch[1]).float().mean()
        bs = batch[1].shape[0]
        for name, value in (("loss", loss), ("acc", acc)):
            if split == "train":  # per-step values are rank 0's own: no collective on every optimizer step under DDP
                self.log(f"train_{name}_step", value, prog_bar=True, on_step=True, on_epoch=False, batch_size=bs)
                key = f"train_{name}_epoch"
            else:
                key = f"{split}_{name}"
            # epoch values are means over all ranks (one scalar all-reduce per value per epoch under DDP)
            self.log(key, value, prog_bar=split != "train", on_step=False, on_epoch=True, batch_size=bs,
                     sync_dist=True)
        return loss

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.check_finite(self._shared_step(batch, "train"))

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "val")

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["vtlab_arch"] = self.arch
        checkpoint["vtlab_train"] = {"freeze": self.freeze}
