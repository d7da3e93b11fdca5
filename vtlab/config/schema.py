"""Typed schemas of the Hydra config tree: one dataclass per group, its closed sets as enums, its checks beside it.

The dataclasses are registered in Hydra's ConfigStore (the primary one as `base_config`, the group ones in
a `schema` group); every YAML option under `conf/` starts from one of them
(`defaults: [/schema/connector@_here_]`), so OmegaConf rejects typos, wrong types and unknown enum values
with a message naming the key, at composition (and so in a sweep's pre-check). Each enum is built from the
table of the module that implements it (SDPA backends, bench modes, dtypes, heads, connector kinds), so the
message and the implementation cannot drift. Each group's `check(root)` holds the rules on its own fields;
vtlab.config.validate calls them in order and adds the rules that need the family registry.
Open sets (model.family, model.tiling) are registries, checked in vtlab.config.validate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import II, MISSING

from vtlab.data.synthetic import TASKS as SYNTHETIC_TASKS
from vtlab.errors import ConfigError, InvalidCellError
from vtlab.measure.modes import MODES
from vtlab.measure.timing import DTYPES
from vtlab.models.connectors import CONNECTORS
from vtlab.models.heads import HEADS
from vtlab.models.sdpa import BACKENDS


class Choice(str, Enum):
    """A closed set of strings: compares equal to its value and prints as it (`f"{Freeze.tower}"` -> tower)."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


def choices(name: str, values: Any, doc: str) -> type[Choice]:
    enum = Choice(name, {v: v for v in values})  # type: ignore[call-overload]
    enum.__doc__ = doc
    enum.__module__ = __name__
    return enum


class Activation(Choice):
    gelu_tanh = "gelu_tanh"  # HF "gelu_pytorch_tanh": the SigLIP towers
    gelu = "gelu"  # exact erf GELU: HF "gelu", timm's default, the projectors


ConnectorKind = choices("ConnectorKind", CONNECTORS, "connector.kind: the registry vtlab.models.connectors.CONNECTORS")
AttentionBackend = choices("AttentionBackend", BACKENDS, "task.attention_backend: vtlab.models.sdpa.BACKENDS")
BenchMode = choices("BenchMode", MODES, "task.modes entries: vtlab.measure.modes.MODES")
DType = choices("DType", ("auto", *DTYPES), "task.dtype: auto (bf16 on CUDA, fp32 on CPU) or vtlab.measure.timing.DTYPES")
HeadKind = choices("HeadKind", HEADS, "task.head: vtlab.models.heads.HEADS")
SyntheticTask = choices("SyntheticTask", SYNTHETIC_TASKS, "data.task: vtlab.data.synthetic.TASKS")


class TaskName(Choice):
    profile = "profile"
    bench = "bench"
    train = "train"
    eval = "eval"


class LoggerKind(Choice):
    wandb = "wandb"
    csv = "csv"
    none = "none"


class LoggerMode(Choice):
    offline = "offline"
    online = "online"
    disabled = "disabled"


class Freeze(Choice):
    tower = "tower"  # train connector + head
    stack = "stack"  # head only
    none = "none"  # full fine-tuning


class DataKind(Choice):
    synthetic = "synthetic"
    folder = "folder"


def _positive(obj: Any, prefix: str, keys: tuple[str, ...], least: int = 1) -> None:
    for key in keys:
        value = getattr(obj, key)
        if value is not None and value < least:
            raise ConfigError(f"{prefix}.{key}={value} must be >= {least}")


def _finite_positive(value: float, key: str) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ConfigError(f"{key}={value} must be a finite positive number (e.g. 1e-6)")


@dataclass
class ModelConfig:
    """One vision tower, every architecture field spelled out (no upstream default is relied on)."""

    name: str = MISSING  # e.g. smolvlm-512-16
    family: str = MISSING  # the upstream family (vtlab.families registry): siglip | idefics3 | llava_next | ...
    image_size: int = MISSING  # native resolution: the position table has (image_size // patch_size)^2 rows
    patch_size: int = MISSING
    num_channels: int = 3
    hidden_size: int = MISSING
    intermediate_size: int = MISSING
    num_layers: int = MISSING
    num_heads: int = MISSING
    layer_norm_eps: float = 1e-6
    hidden_act: Activation = Activation.gelu_tanh
    use_head: bool = False  # build the MAP head (SigLIP pooler); never used for VLM features
    # None: post-LayerNorm last hidden state (SigLIP / Idefics3). A list: pre-LN hidden_states[i]
    # (0 = embeddings, k = after block k, negative from the end) concatenated on channels (LlavaNext).
    feature_layers: list[int] | None = None
    input_size: int | None = None  # image side fed to the tower; None = image_size (else pos-emb interpolation)
    # How an image of any size becomes tower frames (used when an image size is given, e.g. task=profile
    # data.image_size=[H,W]): split (SmolVLM: tiles + global frame), anyres (LlavaNext: base + tiles, packed
    # with unpadding and newlines), none (one frame, resized). null = the family's own: idefics3 -> split,
    # llava_next -> anyres, siglip -> none.
    tiling: str | None = None
    longest_edge: int | None = None  # split: the longest side after the first resize; null = 4 x the frame (2048)
    pinpoints: list[list[int]] | None = None  # anyres: candidate [H, W] resolutions; null = Granite's, per frame
    weights: str | None = None  # checkpoint path, folder or hf://org/name (see vtlab.checkpoints)

    def check(self, root: Any) -> None:
        if self.image_size is None or self.image_size == MISSING:
            raise ConfigError("no model given: add +model=NAME (python -m vtlab --help lists them)")
        for key in ("image_size", "patch_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                    "num_channels"):
            value = getattr(self, key)
            if value <= 0:
                raise ConfigError(f"model.{key}={value} must be a positive integer")
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"model.hidden_size={self.hidden_size} is not divisible by model.num_heads={self.num_heads}; "
                f"valid head counts: {[h for h in range(1, self.hidden_size + 1) if self.hidden_size % h == 0]}"
            )
        _finite_positive(self.layer_norm_eps, "model.layer_norm_eps")
        for key in ("image_size", "input_size"):
            size = getattr(self, key)
            if size is not None and size < self.patch_size:
                raise ConfigError(
                    f"model.{key}={size} is smaller than one patch (model.patch_size={self.patch_size}); "
                    f"use a size >= {self.patch_size}"
                )
        if self.feature_layers is not None:
            lo, hi = -(self.num_layers + 1), self.num_layers
            if len(self.feature_layers) == 0:
                raise ConfigError("model.feature_layers=[] is empty; give at least one index or null")
            for i in self.feature_layers:
                if not lo <= i <= hi:
                    raise ConfigError(
                        f"model.feature_layers contains {i}, outside the tower's depth: model '{self.name}' has "
                        f"{self.num_layers} layers, so valid indices are {lo}..{hi} (0 = embeddings, -1 = last layer)"
                    )


@dataclass
class ConnectorConfig:
    kind: ConnectorKind = ConnectorKind.pixel_unshuffle
    factor: int = 1  # pixel-unshuffle factor per spatial axis, applied before any projection
    hidden_size: int | None = None  # MLP hidden width; None = the text hidden size
    depth: int = 2  # MLP: number of Linear layers (LLaVA mlp{depth}x_gelu)
    bias: bool = True
    act: Activation = Activation.gelu

    def check(self, root: Any) -> None:
        if self.hidden_size is not None and self.hidden_size <= 0:
            raise ConfigError(f"connector.hidden_size={self.hidden_size} must be positive (or null for text_hidden)")
        if self.depth < 1:
            raise ConfigError(f"connector.depth={self.depth} must be >= 1")
        if self.factor < 1:
            raise ConfigError(f"connector.factor={self.factor} must be >= 1")


@dataclass
class TextConfig:
    """The language model the visual tokens are handed to (its width, and its depth for prefill cost)."""

    name: str = MISSING
    hidden_size: int = MISSING
    num_layers: int = MISSING
    intermediate_size: int = MISSING
    num_heads: int = MISSING
    num_kv_heads: int = MISSING
    vocab_size: int = 0

    def check(self, root: Any) -> None:
        _positive(self, "text", ("num_layers", "intermediate_size", "num_heads", "num_kv_heads"))


@dataclass
class TaskConfig:
    name: TaskName = TaskName.profile
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: DType = DType.auto  # auto (bf16 on CUDA, fp32 on CPU) | float32 | bfloat16 | float16
    batch_size: int = 1
    warmup: int = 2
    repeats: int = 5
    # CUDA inference: fc1 bias + tanh GELU in the cuBLASLt GEMM epilogue (+8-14 % img/s on H100, experiments/gpu_speed)
    fused_gelu: bool = True
    quick: bool = False  # profile/bench: a quick look (1 warm-up, <= 3 repeats; bench: small batch, eager only)

    def check(self, root: Any) -> None:
        """The timing loop divides by batch_size and takes a median of repeats."""
        if self.quick and self.name in (TaskName.train, TaskName.eval):
            raise ConfigError(f"task.quick=true is for task=profile and task=bench; for a quick {self.name} use "
                              f"+experiment=quick_train (python -m vtlab --help lists the experiments)")
        for key, least in (("batch_size", 1), ("eval_batch_size", 1), ("repeats", 1), ("warmup", 0)):
            value = getattr(self, key, None)
            if value is not None and value < least:
                raise ConfigError(f"task.{key}={value} must be >= {least}")


@dataclass
class BenchTaskConfig(TaskConfig):
    name: TaskName = TaskName.bench
    # None = pick for the device (recorded in results.json under `settings`): CUDA 64 / CPU 8
    throughput_batch_size: int | None = None
    iters: int | None = None  # timed iterations per repeat of the throughput measurement; CUDA 10 / CPU 2
    latency_iters: int | None = None  # timed batch-1 calls (samples for p50/p90); CUDA 100 / CPU 20
    matmul_size: int | None = None  # side of the square matmul that measures the ceiling; CUDA 8192 / CPU 1024
    modes: list[BenchMode] = field(default_factory=lambda: [BenchMode("eager"), BenchMode("compile"),
                                                              BenchMode("cudagraphs")])  # cudagraphs: CUDA only
    # auto | cudnn | flash | efficient | math | no_cudnn (CPU: auto | flash | math | no_cudnn)
    attention_backend: AttentionBackend = AttentionBackend("auto")

    def check(self, root: Any) -> None:
        super().check(root)
        if not self.modes:
            raise ConfigError(f"task.modes=[] is empty; valid modes: {', '.join(MODES)}")
        for key in ("throughput_batch_size", "iters", "latency_iters", "matmul_size"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"task.{key}={value} must be >= 1 (or null for the device default)")


@dataclass
class TrainTaskConfig(TaskConfig):
    name: TaskName = TaskName.train
    batch_size: int = 32
    freeze: Freeze = Freeze.tower  # tower (train connector + head) | stack (head only) | none (full fine-tuning)
    lr: float = 1e-3  # connector + head
    tower_lr: float = 1e-5
    weight_decay: float = 0.05
    warmup_steps: int = 20
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio at the last step
    compile: bool = False  # torch.compile tower and connector in place (once; validation uses it too)
    ckpt_path: str | None = None  # resume from this checkpoint ("last" = the run dir's last.ckpt)
    head: HeadKind = HeadKind("attention_pool")
    eval_batch_size: int | None = None  # None: batch_size
    keep_every_n_epochs: int = 0  # also keep epochN.ckpt every N epochs (0: best + last only)
    # SDPA kernels for training: no_cudnn (default; cuDNN's backward can give NaN gradients on H100/H200) |
    # auto (PyTorch's choice) | cudnn | flash | efficient | math
    attention_backend: AttentionBackend = AttentionBackend("no_cudnn")

    def check(self, root: Any) -> None:
        super().check(root)
        for key in ("lr", "tower_lr", "weight_decay", "warmup_steps"):  # a negative value trains backwards
            value = getattr(self, key)
            if value < 0:
                raise ConfigError(f"task.{key}={value} must be >= 0")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"task.min_lr_ratio={self.min_lr_ratio} must be in [0, 1] (the cosine floor as a share "
                              f"of the lr)")
        if self.keep_every_n_epochs < 0:
            raise ConfigError(f"task.keep_every_n_epochs={self.keep_every_n_epochs} must be >= 0 (0: best + last only)")


@dataclass
class EvalTaskConfig(TaskConfig):
    name: TaskName = TaskName.eval
    batch_size: int = 64
    ckpt_path: str | None = None  # a task=train checkpoint (best-*.ckpt or last.ckpt); required
    compile: bool = False
    warmup_batches: int = 2  # excluded from the throughput figure



@dataclass
class LoggerConfig:
    kind: LoggerKind = LoggerKind.wandb
    mode: LoggerMode = LoggerMode.offline  # offline | online | disabled (W&B)
    project: str = "vtlab"
    entity: str | None = None
    group: str | None = None  # None: the sweep directory's name inside -m runs
    tags: list[str] = field(default_factory=list)


@dataclass
class TrainerConfig:
    accelerator: str = "auto"
    devices: Any = 1
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str | None = None  # None: bf16-mixed on GPU, 32-true on CPU
    max_epochs: int = 1
    max_steps: int = -1
    max_time: str | None = None  # e.g. 00:00:02:00
    gradient_clip_val: float | None = 1.0
    log_every_n_steps: int = 10
    val_check_interval: Any = None
    deterministic: bool = False
    fast_dev_run: Any = False
    limit_train_batches: Any = None
    limit_val_batches: Any = None
    enable_progress_bar: bool = True


@dataclass
class DataConfig:
    kind: DataKind = DataKind.synthetic  # synthetic | folder
    root: str | None = None  # ImageFolder root (folder) with train/ and val/ sub-folders
    # train/eval: the synthetic render size (an int; images are resized to the tower input).
    # profile/bench: the input image size, an int (square) or [H, W]; it is tiled as model.tiling says.
    # None: one frame at the tower's input size.
    image_size: Any = None
    num_classes: int = 4  # synthetic: count 0..num_classes-1 of "+" glyphs (folder: taken from the folders)
    task: SyntheticTask = SyntheticTask("count_plus")  # synthetic: count_plus (count "+" among "x": fine detail) | count (count glyphs: easy)
    distractors: int = 3  # synthetic count_plus: extra "x" glyphs (every image holds num_classes - 1 + distractors)
    glyph_size: int | None = None  # synthetic: glyph side in px; None: max(5, image_size // 40), odd
    glyphs_per_class: int = 1  # synthetic: label k = k * glyphs_per_class "+" glyphs (denser images for large sizes)
    train_size: int = 512
    val_size: int = 128
    num_workers: int = 0
    seed: int = 0

    def check(self, root: Any) -> None:
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers={self.num_workers} must be >= 0 (0 loads in the main process)")
        _positive(self, "data", ("num_classes", "train_size", "val_size", "glyphs_per_class"))
        if self.distractors < 0:
            raise ConfigError(f"data.distractors={self.distractors} must be >= 0")
        if self.glyph_size is not None and self.glyph_size < 1:
            raise ConfigError(f"data.glyph_size={self.glyph_size} must be >= 1 (or null for the default)")
        size = image_size_of(self.image_size)
        task = getattr(getattr(root, "task", None), "name", None)
        if size is not None and task in (TaskName.train, TaskName.eval) and not isinstance(self.image_size, int):
            raise ConfigError(f"data.image_size={list(size)}: {task} renders square synthetic images; give one "
                              f"int (e.g. data.image_size={max(size)}) or null for the tower input size. [H, W] sizes "
                              f"are for task=profile and task=bench")


@dataclass
class VTLabConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    connector: ConnectorConfig = field(default_factory=ConnectorConfig)
    text: TextConfig = field(default_factory=TextConfig)
    text_hidden: int = II("text.hidden_size")  # the width visual tokens are projected to
    task: TaskConfig = field(default_factory=TaskConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    seed: int = 0
    out_dir: str | None = None  # where results go; None = the Hydra run directory

    def check(self, root: Any = None) -> None:
        """Every group's own checks, in order (vtlab.config.validate adds the cross-group and registry rules)."""
        self.model.check(self)
        self.connector.check(self)
        if self.text_hidden <= 0:
            raise ConfigError(f"text_hidden={self.text_hidden} must be a positive integer (e.g. 576, 960, 2048, 4096)")
        self.text.check(self)
        self.task.check(self)
        self.data.check(self)
        for key, value in (("seed", self.seed), ("data.seed", self.data.seed)):
            if not 0 <= value < 2**32:
                raise ConfigError(f"{key}={value} must be in [0, 2**32) (numpy and Lightning seed range)")


def register_configs() -> None:
    """Register the schemas in Hydra's ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=VTLabConfig)
    # Group schemas live in their own `schema` group (one line in `--help`), so that the real groups list
    # only their YAML options; each option starts with `defaults: [/schema/<name>@_here_]`.
    for name, node in (
        ("connector", ConnectorConfig), ("text", TextConfig), ("profile_task", TaskConfig),
        ("bench_task", BenchTaskConfig), ("train_task", TrainTaskConfig), ("eval_task", EvalTaskConfig),
        ("logger", LoggerConfig), ("trainer", TrainerConfig), ("data", DataConfig),
    ):
        cs.store(group="schema", name=name, node=node)


# ----------------------------------------------------------------------------------------------------
# Geometry helpers the checks and the builders share


def patch_grid(model: ModelConfig) -> tuple[int, int]:
    """(rows, cols) of the patch grid: floor(input / patch), e.g. 384/14 -> 27x27 (the last 6 px are unused)."""
    size = model.input_size or model.image_size
    return size // model.patch_size, size // model.patch_size


def valid_factors(grid: tuple[int, int]) -> list[int]:
    h, w = grid
    return [f for f in range(1, min(h, w) + 1) if h % f == 0 and w % f == 0]


def image_size_of(value: Any, key: str = "data.image_size") -> tuple[int, int] | None:
    """(H, W) from an int (square) or an [H, W] pair; None stays None. Anything else is a ConfigError."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ConfigError(f"{key}={value!r} is not an image size; give an int (square) or [H, W]")
    if isinstance(value, int):
        pair = (value, value)
    else:
        try:
            items = list(value)
        except TypeError:
            raise ConfigError(f"{key}={value!r} is not an image size; give an int (square) or [H, W]") from None
        if len(items) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
            raise ConfigError(f"{key}={items} is not an image size; give an int (square) or [H, W], e.g. [1536,2048]")
        pair = (items[0], items[1])
    if min(pair) < 1:
        raise ConfigError(f"{key}={list(pair)} must be positive; give an int (square) or [H, W], e.g. [1536,2048]")
    return pair


def check_factor(cfg: Any) -> None:
    """The connector factor must divide the patch grid (an impossible sweep cell, not a bad value)."""
    m, grid = cfg.model, patch_grid(cfg.model)
    factors = valid_factors(grid)
    if cfg.connector.factor not in factors:
        raise InvalidCellError(
            f"connector.factor={cfg.connector.factor} does not divide the {grid[0]}x{grid[1]} patch grid of "
            f"model '{m.name}' ({m.input_size or m.image_size}px / {m.patch_size}px patches); valid factors: {factors}"
        )
