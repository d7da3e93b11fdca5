"""`Family`: everything vtlab knows about one upstream model family, and the registry the rest of the code asks.

A family (torchtitan's `ModelSpec` + `StateDictAdapter`, timm's per-family file, at vtlab's scale) owns:
- its pixels: the RGB conversion, resampling, mean / std and size rule of its PIL image processor
  (`preprocess_frame`, `single_frame`), and its default tiling scheme (`tiling`, vtlab.families.tiler);
- its tower: which native tower it builds and the position-embedding rule for other frame sizes;
- its checkpoints: the Hugging Face layouts it recognises (`detect`), the key maps of its tower and connector
  both ways (rule lists applied by `apply_rules`, whose home is vtlab.models.keymap), what its config.json says
  (`read_hf_config`) and what it writes on export (`hf_config`);
- its defaults for `+model=hf`, and the settings a checkpoint carries that a preset may leave open.

`register_family(FamilyClass())` adds one; `get_family(name)` returns it (a `ConfigError` lists the valid
names). Nothing outside vtlab.families compares a family name to a string.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from vtlab.errors import ConfigError
from vtlab.families.pixels import ImageLike, normalise, resize, to_uint8_hwc
from vtlab.models.keymap import Rules, apply_rules  # noqa: F401  (apply_rules: the families' rule helper)
from vtlab.models.towers.siglip import build_tower as build_siglip_tower

Mapped = tuple[dict[str, torch.Tensor], dict[str, str], list[str], list[str], int]  # tensors, origin, unexpected, incomplete, ignored

# ModelConfig fields that only some families read, with their defaults: a family that does not list one in
# `own_fields` refuses a non-default value (never silently ignored)
FAMILY_FIELDS: dict[str, Any] = {"select_strategy": "default", "keep_prefix": False, "num_registers": 0,
                                 "max_num_patches": None, "towers": None}
TOKENWISE_CONNECTORS = ("linear", "mlp", "identity")  # connectors that never read the patch grid (factor 1)


@dataclass
class Layout:
    """A recognised checkpoint layout: its name, the owning family, where the tower and connector live."""

    name: str
    family: str | None  # the owning family, or None (timm, vtlab files: no owning upstream model)
    style: str  # hf | timm | vtlab
    prefix: str  # tower prefix in the checkpoint
    connector_prefix: str = ""
    newline_key: str | None = None
    carries_connector: bool = False
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        where = f"tower under '{self.prefix}'" if self.prefix else "tower at the top level"
        return f"{self.name} ({where})"


def map_tower_keys(layout: Layout, tensors: dict[str, torch.Tensor],
                   tower_fn: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]],
                   group_of: Callable[[str], str | None],
                   connector_fn: Callable[[str], str | None] | None = None) -> Mapped:
    """A checkpoint -> native names through a tower module's own mapping (`tower_fn`: HF names relative to the
    tower -> native names relative to `tower.`, KeyError for a name it does not know).

    Keys under `layout.prefix` are the tower: keys that `group_of` puts in one group (q/k/v of one layer) are
    mapped together (a group the mapping refuses is `incomplete`), every other key alone (refused: `unexpected`).
    Keys under the connector prefix go through `connector_fn`; everything else is ignored (text model, heads)."""
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    unexpected: list[str] = []
    incomplete: list[str] = []
    ignored = 0
    groups: dict[str, dict[str, torch.Tensor]] = {}
    p, cp = layout.prefix, layout.connector_prefix
    for key, t in tensors.items():
        if layout.carries_connector and cp and key.startswith(cp):
            native = connector_fn(key[len(cp):]) if connector_fn is not None else None
            if native is None:
                unexpected.append(key)
            else:
                out[native], origin[native] = t, key
            continue
        if not key.startswith(p):
            ignored += 1
            continue
        rel = key[len(p):]
        group = group_of(rel)
        if group is not None:
            groups.setdefault(group, {})[rel] = t
            continue
        try:
            mapped = tower_fn({rel: t})
        except KeyError:
            unexpected.append(key)
            continue
        for native, v in mapped.items():
            out["tower." + native], origin["tower." + native] = v, key
    for members in groups.values():
        try:
            mapped = tower_fn(members)
        except KeyError as err:
            incomplete.append(f"{' + '.join(p + m for m in sorted(members))} ({err.args[0]})")
            continue
        for native, v in mapped.items():
            out["tower." + native], origin["tower." + native] = v, " + ".join(p + m for m in sorted(members))
    return out, origin, sorted(unexpected), sorted(incomplete), ignored


@dataclass(frozen=True)
class ImagePlan:
    """One image of `size` (H, W): `frames` tower inputs (`rows` x `cols` tiles plus a global/base frame when
    tiled) and `tokens` visual tokens for the language model after packing."""

    size: tuple[int, int]
    tiling: str
    rows: int
    cols: int
    frames: int
    tokens_per_frame: int
    tokens: int
    detail: dict[str, Any]

    @property
    def tiles(self) -> int:
        return self.rows * self.cols

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"tiles": self.tiles}

    def describe(self) -> str:
        h, w = self.size
        if self.tiling == "none" or self.frames == 1:
            return f"{h}x{w} -> 1 frame, {self.tokens} tokens"
        extra = "global" if self.tiling == "split" else "base"
        return (f"{h}x{w} -> {self.rows}x{self.cols} tiles + {extra} = {self.frames} frames, "
                f"{self.tokens} tokens ({self.tiling})")


class Family:
    """Base class of a family; subclasses set the class attributes and override what differs."""

    name: ClassVar[str]
    tiling: ClassVar[str] = "none"  # default tiling scheme (model.tiling=null)
    position_rule: ClassVar[str] = "bicubic"  # position table for a non-native grid
    model_types: ClassVar[tuple[str, ...]] = ()  # config.json model_type values this family reads
    hub_prefix: ClassVar[str] = ""  # tower prefix of the hub checkpoint layout (export, messages)
    resample: ClassVar[int] = Image.Resampling.BICUBIC
    mean: ClassVar[tuple[float, ...]] = (0.5, 0.5, 0.5)
    std: ClassVar[tuple[float, ...]] = (0.5, 0.5, 0.5)
    # checkpoint fields (config keys) a named preset may leave null: taken from the checkpoint then, and a
    # value that differs from the checkpoint's is refused (never silently replaced by a preset default)
    carried_fields: ClassVar[tuple[str, ...]] = ()
    needs_feature_layers: ClassVar[bool] = False  # its connector reads feature taps (no MAP head is run)
    feature_layers_hint: ClassVar[str] = ""

    own_fields: ClassVar[tuple[str, ...]] = ()  # the FAMILY_FIELDS this family reads
    activations: ClassVar[tuple[str, ...]] = ("gelu_tanh", "gelu")  # model.hidden_act values its tower runs

    # ------------------------------------------------------------------ config rules
    def prefix_tokens(self, model_cfg: Any) -> int:
        """Tokens the tower output carries in front of the patch tokens (a CLS kept for the connector)."""
        return 0

    def check(self, cfg: Any) -> None:
        """The family's rules on a whole config (vtlab.config.validate calls it; ConfigError)."""
        m = cfg.model
        act = str(getattr(m.hidden_act, "value", m.hidden_act))
        if act not in self.activations:
            raise ConfigError(f"model.hidden_act={act} is not an activation of family {self.name}; valid: "
                              f"{', '.join(self.activations)}")
        for key, default in FAMILY_FIELDS.items():
            value = getattr(getattr(m, key, default), "value", getattr(m, key, default))
            if key not in self.own_fields and value != default:
                owners = [f.name for f in FAMILIES.values() if key in f.own_fields]
                raise ConfigError(f"model.{key}={value} is not a setting of family {self.name} (it is one of: "
                                  f"{', '.join(owners) or 'none'}); leave it at {default}")
        prefix = self.prefix_tokens(m)
        kind = str(getattr(cfg.connector.kind, "value", cfg.connector.kind))
        if prefix and (kind not in TOKENWISE_CONNECTORS or cfg.connector.factor != 1):
            raise ConfigError(
                f"the {self.name} tower output keeps {prefix} prefix token(s) in front of the patch grid "
                f"(model.select_strategy=full / model.keep_prefix=true), so connector.kind={kind} with "
                f"connector.factor={cfg.connector.factor} has no grid to read; use connector.kind in "
                f"{', '.join(TOKENWISE_CONNECTORS)} with connector.factor=1, or drop the prefix")

    def load_parts(self, stack: torch.nn.Module, model_cfg: Any, load: Callable[..., Any]) -> None:
        """Load checkpoints of the tower's parts (`load(module_with_.tower, path)`); most families have none."""

    # ------------------------------------------------------------------ tower
    def build_tower(self, model_cfg: Any) -> torch.nn.Module:
        """The native tower of this family for a `ModelConfig` (SigLIP's ViT with the family's position rule)."""
        return build_siglip_tower(model_cfg, position_rule=self.position_rule)

    # ------------------------------------------------------------------ pixels
    def preprocess_frame(self, image: ImageLike, size: int) -> torch.Tensor:
        """One square (3, size, size) float32 frame: RGB conversion, resize, rescale, normalise."""
        return normalise(resize(to_uint8_hwc(image), size, size, self.resample), self.mean, self.std)

    def single_frame(self, array: np.ndarray, frame: int, longest_edge: int) -> torch.Tensor:
        """(1, 3, frame, frame): the image as ONE tower frame (tiling `none`), as the processor makes it."""
        return self.preprocess_frame(array, frame)[None]

    # ------------------------------------------------------------------ the LM side (vtlab.models.vlm)
    image_token: ClassVar[str] = "<image>"  # the prompt token whose embeddings the visual tokens replace
    # (checkpoint key prefix, causal-LM state-dict prefix) of the LM inside a whole VLM checkpoint, in order
    lm_prefixes: ClassVar[tuple[tuple[str, str], ...]] = ()
    lm_hub: ClassVar[tuple[str, str] | None] = None  # (decoder prefix, lm_head prefix) an export writes
    image_token_key: ClassVar[str] = "image_token_index"  # config.json key of the image token id

    def special_tokens(self, plan: Any) -> tuple[str, ...]:
        """Tokens the tokenizer must hold as single ids for an image of `plan` (an ImagePlan)."""
        return (self.image_token,)

    def untiled_special_tokens(self) -> tuple[str, ...]:
        """The special tokens of one untiled frame (what error messages list)."""
        return self.special_tokens(ImagePlan((1, 1), "none", 0, 0, 1, 1, 1, {}))

    def image_prompt(self, plan: Any) -> str:
        """The prompt text one image becomes (LLaVA / LlavaNext: `plan.tokens` x `<image>`, packed tokens in order)."""
        return self.image_token * plan.tokens

    def lm_key(self, key: str) -> str | None:
        """A whole-checkpoint key -> the causal LM's state-dict key (None: not an LM tensor)."""
        for prefix, native in self.lm_prefixes:
            if key.startswith(prefix):
                return native + key[len(prefix):]
        return None

    # ------------------------------------------------------------------ checkpoints
    def detect(self, keys: list[str], keyset: set[str], hf_prefix: str | None) -> Layout | None:
        """The layout of a checkpoint whose SigLIP-style tower sits under `hf_prefix`, if this family owns it."""
        return None

    def tower_key_to_native(self, rel: str) -> str | None:
        """A tower key (relative to the layout's prefix) -> its native name (q/k/v are fused by the caller)."""
        return None

    def tower_native_to_hf(self, rel: str) -> str | None:
        """Inverse of `tower_key_to_native` (native name relative to `tower.`)."""
        return None

    qkv_pattern: ClassVar[re.Pattern[str] | None] = None  # HF q/k/v projection keys to fuse into attn.qkv
    tower_roots: ClassVar[tuple[str, ...]] = ()  # what its tower's keys start with (others under the prefix: ignored)
    detect_order: ClassVar[int] = 10  # families are asked in this order; generic layouts (bare towers) last

    # families whose tower names are not SigLIP's map whole checkpoints through their tower module
    def detect_keys(self, keys: list[str], keyset: set[str]) -> Layout | None:
        """A layout recognised from any tensor names (asked before the SigLIP-style detection)."""
        return None

    def convert(self, layout: Layout, tensors: dict[str, torch.Tensor]) -> Mapped | None:
        """Checkpoint -> native names for one of this family's layouts (None: the SigLIP rule engine)."""
        return None

    def export_state(self, state: dict[str, torch.Tensor], cfg: Any) -> dict[str, torch.Tensor] | None:
        """Native state dict -> the tensors of this family's Hugging Face export (None: the rule engine)."""
        return None

    def native_names(self, name: str) -> list[str] | None:
        """The hub name(s) of one native tensor (messages; None: the rule engine)."""
        return None

    def connector_key_to_native(self, rel: str) -> str | None:
        """A connector key relative to the layout's connector prefix -> its native `connector.*` name."""
        return None

    connector_fused_parts: ClassVar[tuple[str, ...]] = ()  # row order of a fused connector tensor, e.g. (k, v)

    def connector_fused_key(self, rel: str) -> tuple[str, str] | None:
        """(native name, part) of a connector key that is one part of a fused native tensor, else None."""
        return None

    def connector_fused_to_hf(self, name: str) -> list[str] | None:
        """The hub names (in `connector_fused_parts` order) of a fused native connector tensor, else None."""
        return None

    def connector_native_to_hf(self, name: str) -> str | None:
        """Native `connector.*` name -> the hub checkpoint's name (export)."""
        return None

    def read_hf_config(self, conf: dict[str, Any], where: str) -> dict[str, Any]:
        """Flat architecture fields (`model.*`, `connector.*`, `text`, `text_hidden`) from a config.json."""
        return {}

    def shape_fields(self, native: dict[str, tuple[int, ...]], width: int) -> dict[str, Any]:
        """What the connector tensors' shapes say (e.g. the unshuffle factor)."""
        return {}

    def hf_defaults(self, arch: dict[str, Any]) -> dict[str, Any]:
        """Connector settings for `+model=hf` when the checkpoint does not spell them out."""
        return {"connector.kind": "linear", "connector.factor": 1, "connector.bias": True}

    def hf_config(self, cfg: Any, stack: torch.nn.Module, extra: dict[str, Any]) -> dict[str, Any]:
        """config.json of an export in this family's Hugging Face format."""
        raise ConfigError(f"export: family {self.name} has no Hugging Face export")


FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Add a family to the registry (its `name` is what `model.family` accepts)."""
    FAMILIES[family.name] = family
    return family


def get_family(name: Any, key: str = "model.family") -> Family:
    name = str(getattr(name, "value", name))
    if name not in FAMILIES:
        raise ConfigError(f"{key}={name} is unknown; valid: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[name]


def family_for_model_type(model_type: str) -> Family | None:
    """The family that reads config.json files of `model_type`, if any."""
    return next((f for f in FAMILIES.values() if model_type in f.model_types), None)
