"""Typed schemas of the Hydra config tree and the cross-field validation that runs before anything is built.

The dataclasses are registered in Hydra's ConfigStore (the primary one as `base_config`, the group ones in
a `schema` group); every YAML option under `conf/` starts from one of them
(`defaults: [/schema/connector@_here_]`), so OmegaConf rejects typos, wrong types and unknown enum values
with a message naming the key. `validate()` adds the rules that span several keys (factor vs patch grid,
feature layers vs depth, image vs patch size) and raises `ConfigError` with a message that names the key,
the value and the valid choices.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import II, MISSING

from vtlab.errors import ConfigError, InvalidCellError


class Activation(str, Enum):
    gelu_tanh = "gelu_tanh"  # HF "gelu_pytorch_tanh": the SigLIP towers
    gelu = "gelu"  # exact erf GELU: HF "gelu", timm's default, the projectors


class Family(str, Enum):
    """Which upstream model owns the tower: decides checkpoint layouts, export names and preprocessing."""

    siglip = "siglip"  # SiglipVisionModel (google/siglip-*)
    idefics3 = "idefics3"  # Idefics3 / SmolVLM vision tower + connector
    llava_next = "llava_next"  # LlavaNext / Granite-Vision: SigLIP tower + multi-layer taps + MLP projector


class ConnectorKind(str, Enum):
    pixel_unshuffle = "pixel_unshuffle"  # Idefics3/SmolVLM: unshuffle + bias-free Linear
    mlp = "mlp"  # LLaVA mlp2x_gelu / LlavaNext projector (erf GELU)
    linear = "linear"  # one Linear with bias
    identity = "identity"  # unshuffle only, no projection


class TaskName(str, Enum):
    profile = "profile"
    bench = "bench"
    train = "train"
    eval = "eval"


class LoggerKind(str, Enum):
    wandb = "wandb"
    csv = "csv"
    none = "none"


@dataclass
class ModelConfig:
    """One vision tower, every architecture field spelled out (no upstream default is relied on)."""

    name: str = MISSING  # e.g. smolvlm-512-16
    family: Family = Family.siglip
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


@dataclass
class ConnectorConfig:
    kind: ConnectorKind = ConnectorKind.pixel_unshuffle
    factor: int = 1  # pixel-unshuffle factor per spatial axis, applied before any projection
    hidden_size: int | None = None  # MLP hidden width; None = the text hidden size
    depth: int = 2  # MLP: number of Linear layers (LLaVA mlp{depth}x_gelu)
    bias: bool = True
    act: Activation = Activation.gelu


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


@dataclass
class TaskConfig:
    name: TaskName = TaskName.profile
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | float32 | bfloat16 | float16
    batch_size: int = 1
    warmup: int = 2
    repeats: int = 5
    # CUDA inference: fc1 bias + tanh GELU in the cuBLASLt GEMM epilogue (+8-14 % img/s on H100, experiments/gpu_speed)
    fused_gelu: bool = True


@dataclass
class BenchTaskConfig(TaskConfig):
    name: TaskName = TaskName.bench
    # None = pick for the device (recorded in results.json under `settings`): CUDA 64 / CPU 8
    throughput_batch_size: int | None = None
    iters: int | None = None  # timed iterations per repeat of the throughput measurement; CUDA 10 / CPU 2
    latency_iters: int | None = None  # timed batch-1 calls (samples for p50/p90); CUDA 100 / CPU 20
    matmul_size: int | None = None  # side of the square matmul that measures the ceiling; CUDA 8192 / CPU 1024
    modes: list[str] = field(default_factory=lambda: ["eager", "compile", "cudagraphs"])  # cudagraphs: CUDA only
    attention_backend: str = "auto"  # auto | cudnn | flash | efficient | math (CPU: auto | flash | math)


@dataclass
class TrainTaskConfig(TaskConfig):
    name: TaskName = TaskName.train
    batch_size: int = 32
    freeze: str = "tower"  # tower (train connector + head) | stack (head only) | none (full fine-tuning)
    lr: float = 1e-3  # connector + head
    tower_lr: float = 1e-5
    weight_decay: float = 0.05
    warmup_steps: int = 20
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio at the last step
    compile: bool = False  # torch.compile tower and connector in place (once; validation uses it too)
    ckpt_path: str | None = None  # resume from this checkpoint ("last" = the run dir's last.ckpt)
    head: str = "attention_pool"
    eval_batch_size: int | None = None  # None: batch_size
    keep_every_n_epochs: int = 0  # also keep epochN.ckpt every N epochs (0: best + last only)
    # SDPA kernels for training: no_cudnn (default; cuDNN's backward can give NaN gradients on H100/H200) |
    # auto (PyTorch's choice) | cudnn | flash | efficient | math
    attention_backend: str = "no_cudnn"


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
    mode: str = "offline"  # offline | online | disabled (W&B)
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
    kind: str = "synthetic"  # synthetic | folder
    root: str | None = None  # ImageFolder root (folder) with train/ and val/ sub-folders
    # train/eval: the synthetic render size (an int; images are resized to the tower input).
    # profile/bench: the input image size, an int (square) or [H, W]; it is tiled as model.tiling says.
    # None: one frame at the tower's input size.
    image_size: Any = None
    num_classes: int = 4  # synthetic: count 0..num_classes-1 of "+" glyphs (folder: taken from the folders)
    task: str = "count_plus"  # synthetic: count_plus (count "+" among "x": fine detail) | count (count glyphs: easy)
    distractors: int = 3  # synthetic count_plus: extra "x" glyphs (every image holds num_classes - 1 + distractors)
    glyph_size: int | None = None  # synthetic: glyph side in px; None: max(5, image_size // 40), odd
    glyphs_per_class: int = 1  # synthetic: label k = k * glyphs_per_class "+" glyphs (denser images for large sizes)
    train_size: int = 512
    val_size: int = 128
    num_workers: int = 0
    seed: int = 0


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
# Cross-field validation


def model_names() -> list[str]:
    """The model presets shipped in conf/model (what `+model=` accepts)."""
    from vtlab.paths import group_options

    return group_options("model")


def patch_grid(model: ModelConfig) -> tuple[int, int]:
    """(rows, cols) of the patch grid: floor(input / patch), e.g. 384/14 -> 27x27 (the last 6 px are unused)."""
    size = model.input_size or model.image_size
    return size // model.patch_size, size // model.patch_size


def valid_factors(grid: tuple[int, int]) -> list[int]:
    h, w = grid
    return [f for f in range(1, min(h, w) + 1) if h % f == 0 and w % f == 0]


def resolve_feature_layers(layers: list[int] | None, num_layers: int) -> list[int] | None:
    """Map hidden_states indices (negative from the end, L+1 entries) to 0..L."""
    if layers is None:
        return None
    return [i if i >= 0 else num_layers + 1 + i for i in layers]


def validate(cfg: Any) -> None:
    """Check the rules that span several keys. `cfg` is a VTLabConfig object or a DictConfig of it."""
    m = cfg.model
    if m.image_size is None or m.image_size == MISSING:
        raise ConfigError(f"no model given: add +model=NAME, one of {model_names()}")
    for key in ("image_size", "patch_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_channels"):
        value = getattr(m, key)
        if value <= 0:
            raise ConfigError(f"model.{key}={value} must be a positive integer")
    if m.hidden_size % m.num_heads:
        raise ConfigError(
            f"model.hidden_size={m.hidden_size} is not divisible by model.num_heads={m.num_heads}; "
            f"valid head counts: {[h for h in range(1, m.hidden_size + 1) if m.hidden_size % h == 0]}"
        )
    for key in ("image_size", "input_size"):
        size = getattr(m, key)
        if size is not None and size < m.patch_size:
            raise ConfigError(
                f"model.{key}={size} is smaller than one patch (model.patch_size={m.patch_size}); "
                f"use a size >= {m.patch_size}"
            )
    if m.feature_layers is not None:
        lo, hi = -(m.num_layers + 1), m.num_layers
        if len(m.feature_layers) == 0:
            raise ConfigError("model.feature_layers=[] is empty; give at least one index or null")
        for i in m.feature_layers:
            if not lo <= i <= hi:
                raise ConfigError(
                    f"model.feature_layers contains {i}, outside the tower's depth: model '{m.name}' has "
                    f"{m.num_layers} layers, so valid indices are {lo}..{hi} (0 = embeddings, -1 = last layer)"
                )
    if cfg.text_hidden <= 0:
        raise ConfigError(f"text_hidden={cfg.text_hidden} must be a positive integer (e.g. 576, 960, 2048, 4096)")
    c = cfg.connector
    if c.hidden_size is not None and c.hidden_size <= 0:
        raise ConfigError(f"connector.hidden_size={c.hidden_size} must be positive (or null for text_hidden)")
    if c.depth < 1:
        raise ConfigError(f"connector.depth={c.depth} must be >= 1")
    task = getattr(cfg, "task", None)  # the timing loop divides by batch_size and takes a median of repeats
    for key, least in (("batch_size", 1), ("eval_batch_size", 1), ("repeats", 1), ("warmup", 0)):
        value = getattr(task, key, None)
        if value is not None and value < least:
            raise ConfigError(f"task.{key}={value} must be >= {least}")
    for key in ("lr", "tower_lr", "weight_decay", "warmup_steps"):  # task=train: a negative value trains backwards
        value = getattr(task, key, None)
        if value is not None and value < 0:
            raise ConfigError(f"task.{key}={value} must be >= 0")
    data = getattr(cfg, "data", None)
    if data is not None and data.num_workers < 0:
        raise ConfigError(f"data.num_workers={data.num_workers} must be >= 0 (0 loads in the main process)")
    logger = getattr(cfg, "logger", None)
    if logger is not None and logger.mode not in ("offline", "online", "disabled"):
        raise ConfigError(f"logger.mode={logger.mode} is unknown; valid: offline, online, disabled")
    ratio = getattr(task, "min_lr_ratio", None)
    if ratio is not None and not 0 <= ratio <= 1:
        raise ConfigError(f"task.min_lr_ratio={ratio} must be in [0, 1] (the cosine floor as a share of the lr)")
    grid = patch_grid(m)
    from vtlab.tiling.plan import check_tiling, image_size_of

    check_tiling(m, m.input_size or m.image_size, grid)
    if data is not None:
        size = image_size_of(data.image_size)
        task_name = getattr(getattr(task, "name", None), "value", getattr(task, "name", None))
        if size is not None and task_name in ("train", "eval") and not isinstance(data.image_size, int):
            raise ConfigError(f"data.image_size={list(size)}: {task_name} renders square synthetic images; give one "
                              f"int (e.g. data.image_size={max(size)}) or null for the tower input size. [H, W] sizes "
                              f"are for task=profile and task=bench")
    factors = valid_factors(grid)
    if c.factor not in factors:
        raise InvalidCellError(
            f"connector.factor={c.factor} does not divide the {grid[0]}x{grid[1]} patch grid of "
            f"model '{m.name}' ({m.input_size or m.image_size}px / {m.patch_size}px patches); valid factors: {factors}"
        )
