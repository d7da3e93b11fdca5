"""`VLMModule`: the LightningModule of `task=align|finetune` (a VisionLanguageModel trained on text answers).

Mirrors LLaVA's train.py recipe: stage 1 (align, `tune_mm_mlp_adapter`) freezes the vision tower and the LM
and trains the projector; stage 2 (finetune) trains the projector and the LM, here any of connector / lm /
tower (`task.train`), each side either whole or through peft LoRA adapters (vtlab.train.lora). The loss is
the LM's next-token cross-entropy on the answer tokens only (labels -100 elsewhere: vtlab.data.vqa_batch).

- AdamW (OptimizedModule: fused on CUDA, warm-up + cosine, clipping, non-finite-loss stop) with one learning
  rate per part: `task.lr` (connector), `task.lm_lr`, `task.tower_lr`; biases, norms, the tower's position
  tables and 1-d parameters do not decay. Parts that do not train are frozen (`requires_grad_(False)`), as
  are the tower modules it never runs, so DDP sees no parameter without a gradient.
- Metrics: `*_loss` (the answer-token CE) and `*_acc`: the exact match of the greedy answer, computed in the
  teacher-forced pass (every answer token and the eos are the argmax given the true prefix, which is exactly
  when greedy decoding reproduces the answer up to eos); `val_acc_<qtype>` per question type.
- Checkpoints carry `vtlab_arch` (vtlab.train.checkpoint.vlm_architecture: model, connector, LM, LoRA),
  `vtlab_train` (the parts trained) and `vtlab_vlm` (the task, the blind control, the offline tokenizer's words).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vtlab.data.vqa_batch import IGNORE
from vtlab.models.fastpaths import configure_fast_paths
from vtlab.train.module import OptimizedModule, OptimSettings

PARTS = ("connector", "lm", "tower")
PEFT_PREFIX = "base_model.model."  # what a peft PeftModel puts in front of its base module's parameter names


def answer_scores(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row of a teacher-forced pass: (exact match of every answer token, summed answer-token CE, answer tokens)."""
    logits, target = logits[:, :-1].float(), labels[:, 1:]
    mask = target != IGNORE
    ce = F.cross_entropy(logits.transpose(1, 2), target.clamp(min=0), reduction="none") * mask
    correct = ((logits.argmax(-1) == target) | ~mask).all(-1)
    return correct, ce.sum(-1), mask.sum(-1)


class VLMModule(OptimizedModule):
    def __init__(self, vlm: nn.Module, train: list[str], optim: OptimSettings | None = None,
                 arch: dict[str, Any] | None = None, meta: dict[str, Any] | None = None,
                 compile_optimizer: bool = False) -> None:
        super().__init__()
        self.vlm = vlm
        self.train_parts = [p for p in PARTS if p in train]
        self.optim = optim or OptimSettings()
        self.arch, self.meta = arch or {}, meta or {}
        self.compile_optimizer = compile_optimizer
        self._compiled = False
        self.vlm.train()  # built in eval mode; Lightning keeps modules' modes (no dropout here, LoRA's aside)
        self.apply_freeze()

    # ------------------------------------------------------------------ parameters
    def part(self, name: str) -> nn.Module:
        return {"connector": self.vlm.stack.connector, "lm": self.vlm.lm, "tower": self.vlm.stack.tower}[name]

    def apply_freeze(self) -> None:
        """Frozen: every part not in `train`, and the tower's unused modules; a LoRA side trains its adapters only."""
        from peft import PeftModel

        self.vlm.requires_grad_(False)
        for name in self.train_parts:
            module = self.part(name)
            if isinstance(module, PeftModel):  # peft's choice: lora_A / lora_B only
                for pname, p in module.named_parameters():
                    p.requires_grad_("lora_" in pname)
            else:
                module.requires_grad_(True)
        for module in self.vlm.stack.tower.inactive_modules():
            module.requires_grad_(False)

    def trainable_parameters(self) -> dict[str, int]:
        return {name: sum(p.numel() for p in self.part(name).parameters() if p.requires_grad) for name in PARTS}

    def _part_of(self, name: str) -> str:
        if name.startswith("vlm.stack.tower."):
            return "tower"
        if name.startswith("vlm.lm."):
            return "lm"
        return "connector"

    def param_groups(self) -> list[dict[str, Any]]:
        """AdamW groups: part x (decay | no decay), with the part's learning rate; empty groups left out."""
        o = self.optim
        lrs = {"connector": o.lr, "lm": o.lm_lr, "tower": o.tower_lr}
        no_decay = {f"vlm.stack.tower.{n}" for n in self.vlm.stack.tower.no_weight_decay()}
        groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            part = self._part_of(name)
            plain = name.replace(PEFT_PREFIX, "")
            decay = p.ndim >= 2 and plain not in no_decay
            groups.setdefault((part, decay), []).append(p)
        return [{"params": params, "lr": lrs[part], "weight_decay": o.weight_decay if decay else 0.0,
                 "name": f"{part}{'' if decay else '_no_decay'}"} for (part, decay), params in sorted(groups.items())]

    def lr_hint(self) -> str:
        o = self.optim
        return f"task.lr (now {o.lr}), task.lm_lr (now {o.lm_lr}) or task.tower_lr (now {o.tower_lr})"

    # ------------------------------------------------------------------ speed levers
    def compile_vision(self, **kwargs: Any) -> None:
        """torch.compile the tower and the connector in place, once (the LM stays eager)."""
        if not self._compiled:
            self.vlm.compile_vision(**kwargs)
            self._compiled = True

    def gradient_checkpointing(self) -> None:
        """Recompute the LM's layers (transformers, non-reentrant) and, when it trains, the tower's blocks."""
        self.vlm.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if "tower" in self.train_parts:
            configure_fast_paths(self.vlm.stack.tower, activation_checkpointing=True)

    # ------------------------------------------------------------------ steps
    def forward(self, batch: dict[str, Any]) -> Any:
        return self.vlm(batch["input_ids"], pixel_values=batch["pixel_values"], plans=batch["plans"],
                        attention_mask=batch["attention_mask"], labels=batch["labels"])

    def _step(self, batch: dict[str, Any], split: str) -> torch.Tensor:
        out = self(batch)
        correct, _, _ = answer_scores(out.logits.detach(), batch["labels"])
        bs = len(batch["qtypes"])
        acc = correct.float().mean()
        if split == "train":
            for name, value in (("loss", out.loss), ("acc", acc)):
                self.log(f"train_{name}_step", value, prog_bar=True, on_step=True, on_epoch=False, batch_size=bs)
                self.log(f"train_{name}_epoch", value, on_step=False, on_epoch=True, batch_size=bs, sync_dist=True)
            return out.loss
        self.log("val_loss", out.loss, prog_bar=True, on_epoch=True, batch_size=bs, sync_dist=True)
        self.log("val_acc", acc, prog_bar=True, on_epoch=True, batch_size=bs, sync_dist=True)
        for qtype in sorted(set(batch["qtypes"])):
            rows = torch.tensor([q == qtype for q in batch["qtypes"]], device=correct.device)
            self.log(f"val_acc_{qtype}", correct[rows].float().mean(), on_epoch=True, batch_size=int(rows.sum()),
                     sync_dist=True)
        return out.loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self.check_finite(self._step(batch, "train"))

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "val")

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["vtlab_arch"] = self.arch
        checkpoint["vtlab_train"] = {"train": self.train_parts}
        checkpoint["vtlab_vlm"] = self.meta
