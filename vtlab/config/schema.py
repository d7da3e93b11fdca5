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

import dataclasses
import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import II, MISSING, OmegaConf

from vtlab.data.conversations import check_root, jsonl_path
from vtlab.data.easyvqa import QTYPES as EASY_VQA_QTYPES
from vtlab.data.easyvqa import easy_vqa_module
from vtlab.data.synthetic import TASKS as SYNTHETIC_TASKS
from vtlab.data.vqa_synthetic import spec_from_config
from vtlab.errors import ConfigError, InvalidCellError
from vtlab.families.tiler import image_size_of, patch_grid
from vtlab.measure.modes import MODES
from vtlab.measure.timing import DTYPES, QUANTIZED
from vtlab.models.connectors import CONNECTORS
from vtlab.models.connectors.avgpool import POOL_MODES
from vtlab.models.connectors.pixel_unshuffle import valid_factors
from vtlab.models.fp8 import GRANULARITIES as FP8_GRANULARITIES
from vtlab.models.heads import HEADS
from vtlab.models.reduction.prune import PRUNE_SCORES
from vtlab.models.sdpa import BACKENDS
from vtlab.models.towers.clip import STRATEGIES as CLIP_STRATEGIES


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
    quick_gelu = "quick_gelu"  # x * sigmoid(1.702 x): OpenAI CLIP towers (family clip only)


ConnectorKind = choices("ConnectorKind", CONNECTORS, "connector.kind: the registry vtlab.models.connectors.CONNECTORS")
PoolMode = choices("PoolMode", POOL_MODES, "connector.pool: vtlab.models.connectors.avgpool.POOL_MODES")
PruneScore = choices("PruneScore", PRUNE_SCORES, "connector.prune: vtlab.models.reduction.prune.PRUNE_SCORES")
AttentionBackend = choices("AttentionBackend", BACKENDS, "task.attention_backend: vtlab.models.sdpa.BACKENDS")
BenchMode = choices("BenchMode", MODES, "task.modes entries: vtlab.measure.modes.MODES")
DType = choices("DType", ("auto", *DTYPES, *QUANTIZED),
                "task.dtype: auto (bf16 on CUDA, fp32 on CPU), vtlab.measure.timing.DTYPES or QUANTIZED (bench, eval)")
Fp8Scaling = choices("Fp8Scaling", FP8_GRANULARITIES, "task.fp8_scaling: vtlab.models.fp8.GRANULARITIES")
SelectStrategy = choices("SelectStrategy", CLIP_STRATEGIES, "model.select_strategy: vtlab.models.towers.clip.STRATEGIES")
HeadKind = choices("HeadKind", HEADS, "task.head: vtlab.models.heads.HEADS")
SyntheticTask = choices("SyntheticTask", SYNTHETIC_TASKS, "data.task: vtlab.data.synthetic.TASKS")


class TaskName(Choice):
    profile = "profile"
    bench = "bench"
    train = "train"
    eval = "eval"
    align = "align"  # LLaVA stage 1: the connector trained on text answers (vtlab.tasks.align)
    finetune = "finetune"  # LLaVA stage 2: connector / LM / tower, LoRA (vtlab.tasks.finetune)


FIT_TASKS = (TaskName.train, TaskName.align, TaskName.finetune)  # tasks that train (a Lightning fit)
VLM_TASKS = (TaskName.align, TaskName.finetune)  # tasks that train the whole VLM on text answers


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
    vqa = "vqa"  # text answers (vtlab.data.vqa): the embedded synthetic VQA generator
    easy_vqa = "easy_vqa"  # text answers: the easy-vqa pip package's images and questions
    conversations = "conversations"  # text answers: a folder of images + LLaVA-style conversation JSONL


ANSWER_KINDS = (DataKind.vqa, DataKind.easy_vqa, DataKind.conversations)  # data with text answers (VLM tasks)


class TowerKind(Choice):
    family = "family"  # the family's own vision tower
    pixels = "pixels"  # the pixel probe (control): raw patches straight into the connector, no tower


class TrainPart(Choice):
    connector = "connector"
    lm = "lm"
    tower = "tower"


def _positive(obj: Any, prefix: str, keys: tuple[str, ...], least: int = 1) -> None:
    for key in keys:
        value = getattr(obj, key)
        if value is not None and value < least:
            raise ConfigError(f"{prefix}.{key}={value} must be >= {least}")


def _finite_positive(value: float, key: str) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ConfigError(f"{key}={value} must be a finite positive number (e.g. 1e-6)")


@dataclass
class TokenMergingConfig:
    """ToMe inside the tower blocks (vtlab.models.reduction.tome): `r` tokens merged per block; 0 = off."""

    r: int = 0


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
    # Family-specific fields (vtlab.families: a family refuses a non-default value of a field it does not own)
    select_strategy: SelectStrategy = SelectStrategy("default")  # clip (LLaVA): default drops the CLS token, full keeps it
    keep_prefix: bool = False  # dinov2: keep the CLS + register tokens in front of the patch tokens
    num_registers: int = 0  # dinov2: register tokens (Dinov2WithRegistersModel; 0 = Dinov2Model)
    max_num_patches: int | None = None  # siglip2 NaFlex: the patch budget per image
    token_merging: TokenMergingConfig = field(default_factory=TokenMergingConfig)
    # family: the family's tower | pixels: the pixel-probe control (raw patches -> connector, vtlab.models.towers.pixels)
    tower_kind: TowerKind = TowerKind.family
    # fused: {name: {family, image_size, patch_size, ..., weights}} sub-towers on one image (vtlab.families.fused)
    towers: dict[str, Any] | None = None

    def sub_towers(self) -> dict[str, ModelConfig]:
        """Each `model.towers.<name>` (family fused) as a ModelConfig; a ConfigError names an unknown field."""
        fields = {f.name for f in dataclasses.fields(ModelConfig)} - {"name", "towers"}
        out: dict[str, ModelConfig] = {}
        for name, sub in (self.towers or {}).items():
            sub = dict(sub)
            unknown = sorted(set(sub) - fields)
            if unknown:
                raise ConfigError(f"model.towers.{name}: unknown field(s) {unknown}; valid: {', '.join(sorted(fields))}")
            if "family" not in sub:
                raise ConfigError(f"model.towers.{name}.family is missing; give the sub-tower's family (e.g. dinov2, "
                                  f"siglip)")
            out[name] = ModelConfig(name=f"{self.name}.{name}", **sub)
        return out

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
        if self.num_registers < 0:
            raise ConfigError(f"model.num_registers={self.num_registers} must be >= 0 (0: no register tokens)")
        if self.max_num_patches is not None and self.max_num_patches < 1:
            raise ConfigError(f"model.max_num_patches={self.max_num_patches} is below one patch; give a patch "
                              f"budget >= 1 (e.g. 256) or null")
        for key in ("image_size", "input_size"):
            size = getattr(self, key)
            if size is not None and size < self.patch_size:
                raise ConfigError(
                    f"model.{key}={size} is smaller than one patch (model.patch_size={self.patch_size}); "
                    f"use a size >= {self.patch_size}"
                )
        if self.tower_kind == TowerKind.pixels:
            for key, bad in (("weights", self.weights), ("towers", self.towers), ("token_merging.r", self.token_merging.r)):
                if bad:
                    raise ConfigError(f"model.tower_kind=pixels (the pixel probe: no tower) cannot take model.{key}={bad}; "
                                      f"drop it, or use model.tower_kind=family")
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
    # The token budget, two spellings (vtlab.config.schema.resolve_budget derives one from the other):
    # `factor` = pixel-unshuffle factor per spatial axis (tokens = (gh/f)*(gw/f)); null = 1 unless `tokens` is
    # given. For kinds that do not unshuffle it is only a spelling of the budget (their module factor is 1).
    factor: int | None = None
    hidden_size: int | None = None  # MLP / Q-Former / C-Abstractor inner width; None = the kind's default
    depth: int = 2  # mlp: Linear layers; perceiver / qformer: layers; c_abstractor: blocks per RegStage
    bias: bool = True
    act: Activation = Activation.gelu
    tokens: int | None = None  # visual tokens per frame; null = from `factor`
    num_heads: int | None = None  # perceiver (16) / qformer (12) attention heads; None = the kind's default
    head_dim: int | None = None  # perceiver head width (96)
    num_kv_heads: int | None = None  # perceiver GQA kv heads (4)
    norm_eps: float = 1e-6  # perceiver RMSNorm eps (Idefics2: the text model's rms_norm_eps)
    pool: PoolMode = PoolMode.avg  # avgpool: avg (adaptive average) | bilinear (LLaVA-OneVision video pooling)
    prune: PruneScore | None = None  # keep the top `prune_tokens` tower tokens by norm | attention (MAP-head probe)
    prune_tokens: int | None = None

    def check(self, root: Any) -> None:
        if self.hidden_size is not None and self.hidden_size <= 0:
            raise ConfigError(f"connector.hidden_size={self.hidden_size} must be positive (or null for text_hidden)")
        if self.depth < 1:
            raise ConfigError(f"connector.depth={self.depth} must be >= 1")
        for key in ("factor", "tokens", "num_heads", "head_dim", "num_kv_heads", "prune_tokens"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"connector.{key}={value} must be >= 1 (or null)")
        problem = CONNECTORS[str(self.kind)].check(self)
        if problem:
            raise ConfigError(problem)
        if (self.prune is None) != (self.prune_tokens is None):
            raise ConfigError(
                f"connector.prune={self.prune} and connector.prune_tokens={self.prune_tokens}: give both "
                f"(prune: {', '.join(PRUNE_SCORES)}; prune_tokens: tokens kept) or neither"
            )
        if self.act == Activation.quick_gelu:
            raise ConfigError("connector.act=quick_gelu is a tower activation; valid for connectors: gelu, gelu_tanh")


@dataclass
class TextConfig:
    """The causal LM the visual tokens are handed to: a full architecture (HF `LlamaConfig` / `GraniteConfig`
    fields), built by vtlab.text.lm with random weights or loaded from `weights`. Only `hidden_size` and the
    depth / head fields are used (prefill cost) unless an LM is built (`lm=true`, or vtlab.build_vlm)."""

    name: str = MISSING
    hidden_size: int = MISSING
    num_layers: int = MISSING
    intermediate_size: int = MISSING
    num_heads: int = MISSING
    num_kv_heads: int = MISSING
    vocab_size: int = 0
    model_type: str = "llama"  # the HF config class: llama | granite (vtlab.text.lm.LM_TYPES)
    hidden_act: str = "silu"
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_position_embeddings: int = 4096  # the context: a prompt (visual + text tokens) longer than this is refused
    tie_word_embeddings: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # other HF config fields (Granite's multipliers)
    weights: str | None = None  # a causal-LM folder or hf://org/name (local files / HF cache only), tokenizer included
    # profile / bench: build the LM and measure prefill, KV cache and time to first token. null (auto): when the
    # command line names a text preset (`text=smollm2_135m`) or text.weights, and the LM fits the device
    # (vtlab.tasks.common.lm_wanted); false: the LM is only a width and a closed form
    lm: bool | None = None
    prompt: str = "Describe this image."  # the text after the image tokens (profile / bench with lm=true)

    def check(self, root: Any) -> None:
        _positive(self, "text", ("num_layers", "intermediate_size", "num_heads", "num_kv_heads",
                                 "max_position_embeddings"))
        if self.lm is False and self.weights:
            raise ConfigError(f"text.weights={self.weights} is set but text.lm=false, so no LM would be built; drop "
                              f"text.lm=false (or text.weights)")
        if self.lm or self.weights:
            self.check_lm(root)

    def check_lm(self, root: Any) -> None:
        """The rules of an LM that is built (text.lm=true, or auto when the task asks for one)."""
        _finite_positive(self.rms_norm_eps, "text.rms_norm_eps")
        if self.vocab_size < 1:
            raise ConfigError(f"text.vocab_size={self.vocab_size}: an LM needs a vocabulary (text '{self.name}')")
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ConfigError(f"text.hidden_size={self.hidden_size}, num_heads={self.num_heads}, num_kv_heads="
                              f"{self.num_kv_heads}: heads must divide the width and kv heads the heads")
        width = getattr(root, "text_hidden", self.hidden_size)
        if width != self.hidden_size:
            raise ConfigError(f"text_hidden={width} (the connector's output width) differs from the LM's hidden size "
                              f"text.hidden_size={self.hidden_size} (text '{self.name}'); drop text_hidden or use a "
                              f"text preset {self.hidden_size} wide")


@dataclass
class TaskConfig:
    name: TaskName = TaskName.profile
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: DType = DType.auto  # auto (bf16 on CUDA, fp32 on CPU) | float32 | bfloat16 | float16 | fp8 (bench, eval)
    # task.dtype=fp8: static (activation scales calibrated once, default) | tensor (from each call's amax) | row (a scale
    # per token and per output channel); vtlab.models.fp8
    fp8_scaling: Fp8Scaling = Fp8Scaling("static")
    batch_size: int = 1
    warmup: int = 2
    repeats: int = 5
    # CUDA inference: fc1 bias + tanh GELU in the cuBLASLt GEMM epilogue (+8-14 % img/s on H100, experiments/gpu_speed)
    fused_gelu: bool = True
    # CUDA inference: each residual add in the out-projection / fc2 GEMM (in place, biases carried into the next
    # LayerNorm, a Triton kernel; vtlab.models.fastpaths). On the H200 with CUDA graphs: +3.6 / +3.5 / +8.9 % img/s
    # (siglip / smolvlm / llavanext) and llavanext batch 1 2.43 -> 2.11 ms (experiments/gpu_speed, 2026-12-02)
    residual_gemm: bool = True
    # patch embedding as one GEMM over unfolded patches instead of the conv (same function; vtlab.models.fastpaths):
    # auto (default: the GEMM on CUDA, +10.6 % siglip img/s on the H200; the conv on CPU) | true | false
    patch_gemm: Any = "auto"
    quick: bool = False  # profile/bench: a quick look (1 warm-up, <= 3 repeats; bench: small batch, eager only)
    # profile: a timing loop stops adding repeats once they took this long (>= 1 timed call; the number run is
    # reported); null: always `repeats`. Binds only where one call takes seconds (a full-size tower on CPU)
    time_budget_s: float | None = None

    def check(self, root: Any) -> None:
        """The timing loop divides by batch_size and takes a median of repeats."""
        if self.patch_gemm not in (True, False, "auto"):
            raise ConfigError(f"task.patch_gemm={self.patch_gemm!r} is not valid; valid: auto (the GEMM on CUDA, the "
                              f"conv elsewhere), true, false")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise ConfigError(f"task.time_budget_s={self.time_budget_s} must be > 0 seconds (or null: no budget)")
        if self.quick and self.name in (*FIT_TASKS, TaskName.eval):
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
    # auto | cudnn | flash | efficient | math | no_cudnn | cudnn_safe (CPU: auto | flash | math | no_cudnn | cudnn_safe)
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
    # SDPA kernels for training: cudnn_safe (default: cuDNN in vtlab's attention layers where its backward is clean,
    # key length % 128 != 64 and no mask or single query; no_cudnn elsewhere) | no_cudnn (cuDNN's backward can give
    # NaN gradients on H100/H200) | auto (PyTorch's choice) | cudnn | flash | efficient | math
    attention_backend: AttentionBackend = AttentionBackend("cudnn_safe")
    # issue 16 training levers (vtlab.models.fastpaths, vtlab.train.module), off until measured to pay:
    fused_gelu_train: bool = False  # fc1 bias + tanh GELU in the GEMM epilogue in training too (CUDA; recomputing backward)
    # each residual add and the LayerNorm after it as one Triton kernel, forward and backward (CUDA, SigLIP-style blocks
    # without a mask or activation checkpointing; vtlab.models.kernels.add_layer_norm). On by default since it paid on
    # every H200 step it was timed in (experiments/gpu_speed/README.md, 2026-12-02, eighth and ninth sessions)
    fused_norm: bool = True
    # fc1's bias + tanh GELU as one Triton kernel whose backward also reduces the bias gradient (CUDA; kernels.py).
    # On by default since it paid in every H200 full fine-tuning step it was timed in (siglip 1.269x, llavanext
    # 1.251x against 1.227x without it; experiments/gpu_speed/README.md, ninth and tenth sessions)
    gelu_kernel: bool = True
    activation_checkpointing: bool = False  # recompute every tower block in the backward: memory for batch size
    compile_optimizer: bool = False  # torch.compile the AdamW step (foreach, tensor lr) instead of the fused kernel
    # a frozen tower (freeze=tower|stack) kept in bf16 and run outside autocast: its no-grad forward takes the inference
    # paths (residual_gemm streams only outside autocast), on both sides of the harness's comparison; the checkpoint
    # holds the tower in bf16 (vtlab.models.stack.VisionStack.freeze_tower_in)
    frozen_tower_bf16: bool = False

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
        if self.frozen_tower_bf16 and self.freeze == Freeze.none:
            raise ConfigError("task.frozen_tower_bf16=true keeps a frozen tower in bf16, but task.freeze=none trains "
                              "the tower; valid: task.freeze=tower or stack with it, or task.frozen_tower_bf16=false")
        if self.frozen_tower_bf16 and root is not None and (root.model.token_merging.r or root.connector.prune):
            raise ConfigError("task.frozen_tower_bf16=true runs the tower alone in bf16, but model.token_merging.r / "
                              "connector.prune put a token reduction inside it; valid: task.frozen_tower_bf16=false "
                              "with a reduction")
        kind = root.data.kind if root is not None else None
        if kind in ANSWER_KINDS:
            raise ConfigError(f"task=train trains a classification head on class labels, but data.kind={kind} has text "
                              f"answers; use task=align or task=finetune for it (or data=synthetic / data=folder)")


@dataclass
class EvalTaskConfig(TaskConfig):
    name: TaskName = TaskName.eval
    batch_size: int = 64
    # a task=train checkpoint (val loss / accuracy) or a task=align|finetune one (generation-based eval); required
    ckpt_path: str | None = None
    compile: bool = False
    warmup_batches: int = 2  # excluded from the throughput figure
    # VLM checkpoints (vtlab.tasks.vlm_eval):
    max_new_tokens: int = 16  # greedy decoding stops at eos or after this many tokens
    adapters: str | None = None  # a <run dir>/adapters folder: its LoRA weights replace the checkpoint's
    blind: bool | None = None  # null: as the checkpoint was trained (a blind model is evaluated blind)

    def check(self, root: Any) -> None:
        super().check(root)
        if self.max_new_tokens < 1:
            raise ConfigError(f"task.max_new_tokens={self.max_new_tokens} must be >= 1")


LORA_TARGETS = {"lm": ("q_proj", "k_proj", "v_proj", "o_proj"), "tower": ("qkv", "proj")}  # attention projections


@dataclass
class LoraConfig:
    """peft LoRA on one side (`task.lora_lm` / `task.lora_tower`): r=0 is off; target_modules null = the side's
    attention projections (LORA_TARGETS: Llama q/k/v/o_proj, vtlab towers' qkv/proj)."""

    r: int = 0
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] | None = None

    def targets(self, side: str) -> list[str]:
        return list(self.target_modules) if self.target_modules else list(LORA_TARGETS[side])

    def check(self, key: str) -> None:
        if self.r < 0:
            raise ConfigError(f"{key}.r={self.r} must be >= 0 (0: no LoRA)")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"{key}.dropout={self.dropout} must be in [0, 1)")
        _finite_positive(self.alpha, f"{key}.alpha")
        if self.target_modules is not None and not self.target_modules:
            raise ConfigError(f"{key}.target_modules=[] is empty; give module names or null for the defaults")


@dataclass
class AlignTaskConfig(TaskConfig):
    """task=align (LLaVA stage 1): tower and LM frozen, the connector trained on the answer tokens."""

    name: TaskName = TaskName.align
    batch_size: int = 16
    eval_batch_size: int | None = None  # None: batch_size
    lr: float = 1e-3  # the connector
    weight_decay: float = 0.0
    warmup_steps: int = 20
    min_lr_ratio: float = 0.0
    compile: bool = False  # torch.compile the vision side (tower + connector) in place
    ckpt_path: str | None = None  # resume from this checkpoint ("last" = the run dir's last.ckpt)
    keep_every_n_epochs: int = 0
    gradient_checkpointing: bool = False  # recompute LM layers and tower blocks in the backward
    attention_backend: AttentionBackend = AttentionBackend("cudnn_safe")  # as task=train's
    blind: bool = False  # the blind control: the LM sees the question without image tokens
    compile_optimizer: bool = False

    def trainable(self) -> list[str]:
        return [str(TrainPart.connector)]

    def check(self, root: Any) -> None:
        super().check(root)
        for key in ("lr", "weight_decay", "warmup_steps", *(k for k in ("lm_lr", "tower_lr") if hasattr(self, k))):
            if getattr(self, key) < 0:
                raise ConfigError(f"task.{key}={getattr(self, key)} must be >= 0")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"task.min_lr_ratio={self.min_lr_ratio} must be in [0, 1]")
        if self.keep_every_n_epochs < 0:
            raise ConfigError(f"task.keep_every_n_epochs={self.keep_every_n_epochs} must be >= 0")
        kind = root.data.kind if root is not None else None
        if kind is not None and kind not in ANSWER_KINDS:
            raise ConfigError(f"task={self.name} trains on text answers, but data.kind={kind} has class labels only; "
                              f"valid: {', '.join(str(k) for k in ANSWER_KINDS)} (e.g. data=vqa)")
        if self.blind and self.trainable() == [str(TrainPart.connector)]:
            raise ConfigError(f"task={self.name} task.blind=true would train nothing: without the image the connector "
                              f"is never used; run the blind control with task=finetune task.train=[connector,lm]")
        if self.blind and root is not None and root.model.tower_kind == TowerKind.pixels:
            raise ConfigError("task.blind=true (no image) and model.tower_kind=pixels (no tower) are two controls; "
                              "run one at a time")


@dataclass
class FinetuneTaskConfig(AlignTaskConfig):
    """task=finetune (LLaVA stage 2): `train` chooses the parts, LoRA per side, one learning rate per part."""

    name: TaskName = TaskName.finetune
    lr: float = 2e-4  # the connector
    train: list[str] = field(default_factory=lambda: ["connector", "lm"])  # connector | lm | tower
    lm_lr: float = 2e-4
    tower_lr: float = 2e-5
    lora_lm: LoraConfig = field(default_factory=LoraConfig)
    lora_tower: LoraConfig = field(default_factory=LoraConfig)
    adapters: str | None = None  # start from the LoRA weights of a <run dir>/adapters folder

    def trainable(self) -> list[str]:
        return [p for p in TrainPart.__members__ if p in self.train]

    def check(self, root: Any) -> None:
        super().check(root)
        valid = ", ".join(TrainPart.__members__)
        if not self.train:
            raise ConfigError(f"task.train=[] trains nothing; valid parts: {valid} (e.g. task.train=[connector,lm])")
        for part in self.train:
            if part not in TrainPart.__members__:
                raise ConfigError(f"task.train contains {part!r}, not a part of the VLM; valid: {valid}")
        for side in ("lm", "tower"):
            lora = getattr(self, f"lora_{side}")
            lora.check(f"task.lora_{side}")
            if lora.r and side not in self.train:
                raise ConfigError(f"task.lora_{side}.r={lora.r} but task.train={list(self.train)} leaves the {side} "
                                  f"frozen; add {side} to task.train (LoRA then trains only the adapters)")
        if root is not None and root.model.tower_kind == TowerKind.pixels and ("tower" in self.train or
                                                                                self.lora_tower.r):
            raise ConfigError("model.tower_kind=pixels has no tower to train; drop tower from task.train and "
                              "task.lora_tower.r")



@dataclass
class LoggerConfig:
    kind: LoggerKind = LoggerKind.wandb
    mode: LoggerMode = LoggerMode.offline  # offline | online | disabled (W&B)
    project: str = "vtlab"
    entity: str | None = None
    group: str | None = None  # None: the sweep directory's name inside -m runs
    tags: list[str] = field(default_factory=list)


ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")  # what vtlab runs on (Lightning's TPU/HPU/XLA are not supported)


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

    def check(self, root: Any) -> None:
        """What Lightning would refuse only once the Trainer is built (or accept and misbehave on)."""
        if self.accelerator not in ACCELERATORS:
            raise ConfigError(f"trainer.accelerator={self.accelerator} is unknown; valid: {', '.join(ACCELERATORS)}")
        _positive(self, "trainer", ("num_nodes", "log_every_n_steps"))
        if self.max_epochs < -1 or self.max_steps < -1:
            raise ConfigError(f"trainer.max_epochs={self.max_epochs} / trainer.max_steps={self.max_steps} must be "
                              f">= -1 (-1: no limit)")
        for key in ("val_check_interval", "limit_train_batches", "limit_val_batches"):
            value = getattr(self, key)
            if value is None:
                continue
            ok = (isinstance(value, int) and not isinstance(value, bool) and value >= (1 if key == "val_check_interval" else 0)) \
                or (isinstance(value, float) and 0.0 < value <= 1.0)
            if not ok:
                raise ConfigError(f"trainer.{key}={value} must be an int >= {1 if key == 'val_check_interval' else 0} "
                                  f"(batches) or a float in (0, 1] (a share of the epoch), or null")


@dataclass
class DataConfig:
    kind: DataKind = DataKind.synthetic  # synthetic | folder | vqa | easy_vqa | conversations
    root: str | None = None  # folder: ImageFolder root with train/ and val/; conversations: images + JSONL files
    # train/eval: the synthetic render size (an int; images are resized to the tower input).
    # profile/bench: the input image size, an int (square) or [H, W]; it is tiled as model.tiling says.
    # None: one frame at the tower's input size (vqa: rendered at the tower's input size).
    image_size: Any = None
    num_classes: int = 4  # synthetic: count 0..num_classes-1 of "+" glyphs (folder: taken from the folders)
    task: SyntheticTask = SyntheticTask("count_plus")  # synthetic: count_plus (count "+" among "x": fine detail) | count (count glyphs: easy)
    distractors: int = 3  # synthetic count_plus: extra "x" glyphs (every image holds num_classes - 1 + distractors)
    glyph_size: int | None = None  # synthetic: glyph side in px; None: max(5, image_size // 40), odd
    glyphs_per_class: int = 1  # synthetic: label k = k * glyphs_per_class "+" glyphs (denser images for large sizes)
    # samples per split (synthetic, vqa: generated; easy_vqa, conversations: a seeded subset, null = all)
    train_size: int | None = 512
    val_size: int | None = 128
    num_workers: int = 0
    seed: int = 0
    # Sets with text answers (vtlab.data.vqa). The question types to keep; null = all of the kind's
    # (vqa: count, ocr, spatial, compare; easy_vqa: shape, color, yes_no; conversations: the rows' qtype keys)
    qtypes: list[str] | None = None
    # vqa difficulty knobs (vtlab.data.vqa_synthetic), per question type:
    count_max: int = 4  # count: answers 0..count_max (<= 9)
    count_glyph_size: int | None = None  # count: glyph side in px (>= 5); null: max(5, size // 24)
    count_distractors: int = 4  # count: glyphs of the other shapes (clutter)
    ocr_length: int = 3  # ocr: characters in the string (answer "k 7 q")
    ocr_scale: int | None = None  # ocr: px per dot of the 5x7 font; null: max(1, size // 96)
    spatial_grid: int = 3  # spatial: an n x n grid of shapes (2..9)
    compare_glyphs: int = 7  # compare: glyphs in all, split unevenly between the left and right halves (clutter)
    compare_glyph_size: int | None = None  # compare: glyph side in px (>= 5); null: max(5, size // 24)
    # conversations: the JSONL files under data.root (the test split reads val_jsonl)
    train_jsonl: str = "train.jsonl"
    val_jsonl: str = "val.jsonl"

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
        if size is not None and task in (*FIT_TASKS, TaskName.eval) and not isinstance(self.image_size, int):
            raise ConfigError(f"data.image_size={list(size)}: {task} renders square synthetic images; give one "
                              f"int (e.g. data.image_size={max(size)}) or null for the tower input size. [H, W] sizes "
                              f"are for task=profile and task=bench")
        kind = str(self.kind)
        if kind in ("synthetic", "vqa"):
            for key in ("train_size", "val_size"):
                if getattr(self, key) is None:
                    raise ConfigError(f"data.{key}=null: data.kind={kind} generates that many samples; give a number "
                                      f"(null, every sample, is for data.kind=easy_vqa and conversations)")
        if kind in ("synthetic", "folder"):
            if self.qtypes is not None:
                raise ConfigError(f"data.qtypes={list(self.qtypes)} is for the sets with text answers (data.kind=vqa, "
                                  f"easy_vqa, conversations); data.kind={kind} has class labels")
            return
        if self.qtypes is not None and not self.qtypes:
            raise ConfigError("data.qtypes=[] is empty; give the question types to keep, or null for all")
        if self.qtypes is not None and len(set(self.qtypes)) != len(self.qtypes):
            raise ConfigError(f"data.qtypes={list(self.qtypes)} names a type twice; list each once")
        reads = str(task) not in ("profile", "bench")  # profile / bench read no samples, only data.image_size
        if kind == "vqa":
            self._check_vqa(root, size, geometry=reads)
        elif kind == "easy_vqa":
            easy_vqa_module()
            unknown = [q for q in self.qtypes or () if q not in EASY_VQA_QTYPES]
            if unknown:
                raise ConfigError(f"data.qtypes contains {unknown[0]!r}, not a question type of data.kind=easy_vqa; "
                                  f"valid: {', '.join(EASY_VQA_QTYPES)}")
        else:  # conversations: the folder and the files the task reads (the rows are checked when loaded)
            check_root(self.root)
            splits = ("val",) if str(task) == "eval" else ("train", "val")
            for split in splits if reads else ():
                jsonl_path(self, split)

    def _check_vqa(self, root: Any, size: tuple[int, int] | None, geometry: bool = True) -> None:
        """The generator's knobs, and (`geometry`: a task that renders samples) whether what they ask for fits
        the render size (data.image_size, else the tower's input size)."""
        if geometry and size is not None and not isinstance(self.image_size, int):
            raise ConfigError(f"data.image_size={list(size)}: data.kind=vqa renders square images; give one int "
                              f"(e.g. data.image_size={max(size)}) or null for the tower input size")
        model = getattr(root, "model", None)
        tower = getattr(model, "input_size", None) or getattr(model, "image_size", None)
        spec_from_config(self, tower if isinstance(tower, int) else None).check(geometry)


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
    # allow a run to replace what an earlier run left in out_dir (results.json, checkpoints, another task's
    # record); a folder held by a live run (.vtlab.lock) is refused even so (vtlab.results.rundir)
    overwrite: bool = False

    def check(self, root: Any = None) -> None:
        """Every group's own checks, in order (vtlab.config.validate adds the cross-group and registry rules)."""
        self.model.check(self)
        self.connector.check(self)
        if self.text_hidden <= 0:
            raise ConfigError(f"text_hidden={self.text_hidden} must be a positive integer (e.g. 576, 960, 2048, 4096)")
        if self.task.name in VLM_TASKS:
            self.text.lm = True  # align / finetune always build the LM (text.lm is profile / bench's switch)
        self.text.check(self)
        self.task.check(self)
        self.trainer.check(self)
        self.data.check(self)
        for key, value in (("seed", self.seed), ("data.seed", self.data.seed)):
            if not 0 <= value < 2**32:
                raise ConfigError(f"{key}={value} must be in [0, 2**32) (numpy and Lightning seed range)")


def register_configs() -> None:
    """Register the schemas in Hydra's ConfigStore, and the presets' resolver (idempotent)."""
    OmegaConf.register_new_resolver("vtlab.unless_tokens", unless_tokens, replace=True)
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=VTLabConfig)
    # Group schemas live in their own `schema` group (one line in `--help`), so that the real groups list
    # only their YAML options; each option starts with `defaults: [/schema/<name>@_here_]`.
    for name, node in (
        ("connector", ConnectorConfig), ("text", TextConfig), ("profile_task", TaskConfig),
        ("bench_task", BenchTaskConfig), ("train_task", TrainTaskConfig), ("eval_task", EvalTaskConfig),
        ("align_task", AlignTaskConfig), ("finetune_task", FinetuneTaskConfig),
        ("logger", LoggerConfig), ("trainer", TrainerConfig), ("data", DataConfig),
    ):
        cs.store(group="schema", name=name, node=node)


# ----------------------------------------------------------------------------------------------------
# The connector factor against the patch grid (the geometry itself is vtlab.families.tiler's)


def resolve_budget(cfg: Any) -> None:
    """Derive `connector.tokens` and `connector.factor` from each other and write both back (in place).

    `tokens` and `factor` are two spellings of one budget: tokens = (gh/f)*(gw/f). Either may be given;
    giving both inconsistently is refused naming both. A budget the kind cannot make on this grid (a factor
    that does not divide it, tokens not among the kind's budgets) is an `InvalidCellError` (a skipped sweep
    cell). Kinds that do not unshuffle keep factor only as a spelling (null where tokens has none)."""
    m, c, grid = cfg.model, cfg.connector, patch_grid(cfg.model)
    kind = CONNECTORS[str(c.kind)]
    where = f"the {grid[0]}x{grid[1]} patch grid of model '{m.name}' ({m.input_size or m.image_size}px / {m.patch_size}px patches)"
    if m.token_merging.r or c.prune is not None:
        return _resolve_reduced_budget(cfg, kind, grid, where)
    factors = valid_factors(grid)
    spelled = {(grid[0] // f) * (grid[1] // f): f for f in reversed(factors)}  # tokens -> factor
    if c.factor is not None and c.factor not in factors:
        raise InvalidCellError(f"connector.factor={c.factor} does not divide {where}; valid factors: {factors}")
    from_factor = spelled_tokens = None
    if c.factor is not None:
        from_factor = (grid[0] // c.factor) * (grid[1] // c.factor)
    tokens = c.tokens if c.tokens is not None else (from_factor if from_factor is not None else grid[0] * grid[1])
    if c.tokens is not None and from_factor is not None and c.tokens != from_factor:
        raise InvalidCellError(
            f"connector.tokens={c.tokens} and connector.factor={c.factor} disagree on {where}: factor {c.factor} "
            f"makes {from_factor} tokens; give one of them (tokens = (rows/factor) * (cols/factor))"
        )
    budgets = kind.budgets(grid)
    if budgets is not None and tokens not in budgets:
        raise InvalidCellError(
            f"connector.tokens={tokens} is not a budget connector.kind={c.kind} can make on {where}; "
            f"valid tokens: {budgets}"
        )
    spelled_tokens = spelled.get(tokens)
    c.tokens = tokens
    c.factor = spelled_tokens if kind.layout != "unshuffle" else spelled[tokens]


def _resolve_reduced_budget(cfg: Any, kind: Any, grid: tuple[int, int], where: str) -> None:
    """With ToMe or pruning the connector reads an unordered set of n tokens (n = after merging / top-k):
    set kinds (perceiver, qformer) take any budget; token-wise unshuffle kinds only at factor 1 (tokens = n);
    kinds that pool a grid cannot read a set and are refused."""
    m, c = cfg.model, cfg.connector
    r, reduced = m.token_merging.r, []
    if r:
        reduced.append(f"model.token_merging.r={r}")
        if r < 0:
            raise ConfigError(f"model.token_merging.r={r} must be >= 0 (tokens merged per block; 0 = off)")
        if m.feature_layers is not None:
            raise ConfigError(
                f"model.token_merging.r={r} needs the post-LN last layer (model.feature_layers=null); model "
                f"'{m.name}' taps {m.feature_layers}, whose token positions ToMe would scramble"
            )
    n = grid[0] * grid[1]
    for _ in range(m.num_layers):
        n -= min(r, n // 2)
    if c.prune is not None:
        reduced.append(f"connector.prune={c.prune}")
        if c.prune_tokens > n:
            raise InvalidCellError(f"connector.prune_tokens={c.prune_tokens} exceeds the {n} tokens left on {where}"
                                   f"{' after ToMe' if r else ''}; valid: 1..{n}")
        if str(c.prune) == "attention" and not m.use_head:
            raise ConfigError("connector.prune=attention scores tokens with the tower's MAP-head probe: set "
                              "model.use_head=true (or use connector.prune=norm)")
        n = c.prune_tokens
    what = " and ".join(reduced)
    if kind.layout == "grid":
        readers = [k for k, v in CONNECTORS.items() if v.reads_sets]
        raise InvalidCellError(
            f"{what} leaves an unordered token set, which connector.kind={c.kind} cannot pool as a grid; "
            f"valid kinds: {', '.join(readers)} (any tokens) or pixel_unshuffle, mlp, linear, identity at factor 1"
        )
    if kind.layout == "unshuffle":
        if c.factor not in (None, 1) or c.tokens not in (None, n):
            raise InvalidCellError(
                f"{what} leaves {n} unordered tokens: connector.kind={c.kind} maps them one to one "
                f"(connector.factor=1, connector.tokens={n}); got connector.factor={c.factor}, connector.tokens={c.tokens}"
            )
        c.factor, c.tokens = 1, n
        return
    if c.factor is not None:
        raise InvalidCellError(f"{what}: give the budget of connector.kind={c.kind} as connector.tokens, not "
                               f"connector.factor={c.factor} (there is no grid left to unshuffle)")
    c.tokens = c.tokens if c.tokens is not None else n


def unless_tokens(value: Any, tokens: Any) -> Any:
    """`${vtlab.unless_tokens:4,${connector.tokens}}`: a preset's factor that yields to `connector.tokens`."""
    return value if tokens is None else None


