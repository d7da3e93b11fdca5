"""Checkpoint key layouts: recognise one from its tensor names and map it to vtlab's native names (and back).

Mirrors the key tables of towers-and-connectors.md (c.1), (c.2) and (d):
- `SiglipVisionModel` (hub / transformers v4: `vision_model.*`; v5 `save_pretrained`: no prefix) and a full
  `SiglipModel` (`vision_model.*`, the text tower is ignored);
- Idefics3 / SmolVLM (`model.vision_model.*`, `model.connector.modality_projection.proj.weight`);
- LlavaNext / Granite-Vision (`vision_tower.vision_model.*` or v5 `vision_tower.*`, optionally under `model.`;
  `multi_modal_projector.linear_{1,2}.*`, `image_newline`); text models are ignored;
- timm `vit_*_siglip_*` (fused `attn.qkv`, `pos_embed` (1, N, D), `attn_pool.{latent,q,kv,proj,norm,mlp}`);
- vtlab itself (`tower.*`, `connector.*`, `image_newline`, possibly under a Lightning module prefix).
HF q/k/v projections are fused into `attn.qkv` (rows q, k, v); timm `attn_pool.q` + `attn_pool.kv` become
`head.in_proj` (rows q, k, v), exactly as `nn.MultiheadAttention.in_proj_weight` stores them.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

import torch

from vtlab.errors import CheckpointError

HF_PATCH = "embeddings.patch_embedding.weight"
TIMM_PATCH = "patch_embed.proj.weight"
VTLAB_PATCH = "tower.patch_embed.weight"


@dataclass
class Layout:
    """A recognised layout: its name, the owning family, where the tower and connector live."""

    name: str
    family: str | None  # siglip | idefics3 | llava_next | None (timm, vtlab: no owning model)
    style: str  # hf | timm | vtlab
    prefix: str  # tower prefix in the checkpoint
    connector_prefix: str = ""  # idefics3: '[model.]connector.'; llava_next: '[model.]multi_modal_projector.'
    newline_key: str | None = None
    carries_connector: bool = False
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        where = f"tower under '{self.prefix}'" if self.prefix else "tower at the top level"
        return f"{self.name} ({where})"


# ---------------------------------------------------------------------------------------------- detection


def _prefix_summary(keys: list[str]) -> str:
    counts = Counter(k.split(".")[0] + ("." if "." in k else "") for k in keys)
    top = ", ".join(f"{p}* ({n})" for p, n in counts.most_common(8))
    return f"{len(keys)} tensors; top-level names: {top}; first keys: {sorted(keys)[:5]}"


def detect(keys: list[str], spec: str = "") -> Layout:
    """Recognise the layout from tensor names; raises `CheckpointError` saying what was found otherwise."""
    keyset = set(keys)
    vt = [k[: -len(VTLAB_PATCH)] for k in keys if k.endswith(VTLAB_PATCH)]
    if vt:
        p = min(vt, key=len)
        return Layout("vtlab" + (f" (under '{p}')" if p else ""), None, "vtlab", p + "tower.", p + "connector.",
                      p + "image_newline", carries_connector=True)
    hf = [k[: -len(HF_PATCH)] for k in keys if k.endswith(HF_PATCH)]
    if hf:
        p = min(hf, key=len)
        if p in ("", "vision_model."):
            if f"{p[:-len('vision_model.')] if p else ''}connector.modality_projection.proj.weight" in keyset and p:
                return Layout("idefics3 (Idefics3Model)", "idefics3", "hf", p, "connector.", carries_connector=True)
            full = any(k.startswith("text_model.") for k in keys)
            name = "SiglipModel (vision tower; text tower ignored)" if full else (
                "SiglipVisionModel (hub / transformers v4: vision_model.*)" if p else
                "SiglipVisionModel (transformers v5: no prefix)")
            return Layout(name, "siglip", "hf", p, "connector.", carries_connector=any(k.startswith("connector.") for k in keys))
        if p == "model.vision_model.":
            return Layout("Idefics3 / SmolVLM (model.vision_model.*)", "idefics3", "hf", p, "model.connector.",
                          carries_connector=True)
        m = re.fullmatch(r"(model\.)?vision_tower\.(vision_model\.)?", p)
        if m:
            top = m.group(1) or ""
            style = "hub / v4: vision_tower.vision_model.*" if m.group(2) else "v5: vision_tower.*"
            return Layout(f"LlavaNext / Granite-Vision ({top}{style})", "llava_next", "hf", p,
                          top + "multi_modal_projector.", top + "image_newline", carries_connector=True)
        raise CheckpointError(
            f"checkpoint {spec}: layout not recognised: found a SigLIP-style tower under '{p}', which is none of "
            "'' / 'vision_model.' (SiglipVisionModel, SiglipModel), 'model.vision_model.' (Idefics3/SmolVLM), "
            f"'[model.]vision_tower.[vision_model.]' (LlavaNext). {_prefix_summary(keys)}"
        )
    tm = [k[: -len(TIMM_PATCH)] for k in keys if k.endswith(TIMM_PATCH)]
    if tm:
        p = min(tm, key=len)
        if p + "pos_embed" in keyset:
            if p + "cls_token" in keyset:
                raise CheckpointError(
                    f"checkpoint {spec}: a timm ViT with a class token ('{p}cls_token'): only the SigLIP variants "
                    "(vit_*_siglip_*, class_token=False) match vtlab's tower"
                )
            return Layout("timm vit_*_siglip_*", None, "timm", p)
    raise CheckpointError(
        f"checkpoint {spec}: layout not recognised (no SiglipVisionModel / SiglipModel / Idefics3 / LlavaNext / "
        f"timm vit_*_siglip_* / vtlab tower found). Found: {_prefix_summary(keys)}"
    )


# ---------------------------------------------------------------------------------------------- HF <-> native

_HF_RULES: list[tuple[str, str]] = [
    (r"embeddings\.patch_embedding\.(weight|bias)", r"tower.patch_embed.\1"),
    (r"embeddings\.position_embedding\.weight", r"tower.pos_embed"),
    (r"encoder\.layers\.(\d+)\.layer_norm([12])\.(weight|bias)", r"tower.blocks.\1.norm\2.\3"),
    (r"encoder\.layers\.(\d+)\.self_attn\.out_proj\.(weight|bias)", r"tower.blocks.\1.attn.proj.\2"),
    (r"encoder\.layers\.(\d+)\.mlp\.(fc[12])\.(weight|bias)", r"tower.blocks.\1.mlp.\2.\3"),
    (r"post_layernorm\.(weight|bias)", r"tower.post_norm.\1"),
    (r"head\.probe", r"tower.head.probe"),
    (r"head\.attention\.in_proj_(weight|bias)", r"tower.head.in_proj.\1"),
    (r"head\.attention\.out_proj\.(weight|bias)", r"tower.head.out_proj.\1"),
    (r"head\.layernorm\.(weight|bias)", r"tower.head.norm.\1"),
    (r"head\.mlp\.(fc[12])\.(weight|bias)", r"tower.head.mlp.\1.\2"),
]
_HF_QKV = re.compile(r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)")

_TIMM_RULES: list[tuple[str, str]] = [
    (r"patch_embed\.proj\.(weight|bias)", r"tower.patch_embed.\1"),
    (r"pos_embed", r"tower.pos_embed"),
    (r"blocks\.(\d+)\.(norm[12])\.(weight|bias)", r"tower.blocks.\1.\2.\3"),
    (r"blocks\.(\d+)\.attn\.(qkv|proj)\.(weight|bias)", r"tower.blocks.\1.attn.\2.\3"),
    (r"blocks\.(\d+)\.mlp\.(fc[12])\.(weight|bias)", r"tower.blocks.\1.mlp.\2.\3"),
    (r"norm\.(weight|bias)", r"tower.post_norm.\1"),
    (r"attn_pool\.latent", r"tower.head.probe"),
    (r"attn_pool\.proj\.(weight|bias)", r"tower.head.out_proj.\1"),
    (r"attn_pool\.norm\.(weight|bias)", r"tower.head.norm.\1"),
    (r"attn_pool\.mlp\.(fc[12])\.(weight|bias)", r"tower.head.mlp.\1.\2"),
]
_TIMM_POOL_QKV = re.compile(r"attn_pool\.(q|kv)\.(weight|bias)")
_TIMM_IGNORED = re.compile(r"head\.(weight|bias)")  # the classifier (num_classes > 0): not part of the tower


@dataclass
class Converted:
    """Native tensors plus the bookkeeping needed for clear error messages."""

    tensors: dict[str, torch.Tensor]
    origin: dict[str, str]  # native name -> checkpoint name(s) it came from
    unexpected: list[str]  # checkpoint names inside the tower/connector namespace that map to nothing
    incomplete: list[str]  # checkpoint names absent from a group that must be fused (q/k/v, attn_pool q/kv)
    ignored: int = 0  # tensors outside vtlab's scope (text model, classifier, ...)
    present: set[str] = field(default_factory=set)  # every tensor name in the checkpoint


def _apply(rules: list[tuple[str, str]], rel: str) -> str | None:
    for pattern, repl in rules:
        if re.fullmatch(pattern, rel):
            return re.sub(f"^{pattern}$", repl, rel)
    return None


def to_native(layout: Layout, tensors: dict[str, torch.Tensor]) -> Converted:
    """Map a checkpoint's tensors (any recognised layout) to vtlab's native state-dict names."""
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    unexpected: list[str] = []
    incomplete: list[str] = []
    groups: dict[str, dict[str, tuple[str, torch.Tensor]]] = {}
    ignored = 0
    p, cp = layout.prefix, layout.connector_prefix

    def put(native: str, src: str, t: torch.Tensor) -> None:
        out[native] = t
        origin[native] = src

    for key, t in tensors.items():
        if layout.style == "vtlab":
            root = p[: -len("tower.")]
            if key.startswith(p) or key.startswith(cp):
                put(key[len(root):], key, t)
            elif key == layout.newline_key:
                put("image_newline", key, t)
            else:
                ignored += 1
            continue
        if layout.newline_key and key == layout.newline_key:
            put("image_newline", key, t)
            continue
        if layout.carries_connector and key.startswith(cp):
            rel = key[len(cp):]
            if layout.family == "idefics3" and rel == "modality_projection.proj.weight":
                put("connector.proj.weight", key, t)
            elif layout.family == "llava_next" and re.fullmatch(r"linear_[12]\.(weight|bias)", rel):
                put("connector.layers." + rel, key, t)
            elif layout.family == "siglip":  # a vtlab export of a SigLIP stack keeps its connector as is
                put(key, key, t)
            else:
                unexpected.append(key)
            continue
        if not key.startswith(p):
            ignored += 1
            continue
        rel = key[len(p):]
        if layout.style == "hf":
            m = _HF_QKV.fullmatch(rel)
            if m:
                groups.setdefault(f"tower.blocks.{m.group(1)}.attn.qkv.{m.group(3)}", {})[m.group(2)] = (key, t)
                continue
            native = _apply(_HF_RULES, rel)
        else:
            m = _TIMM_POOL_QKV.fullmatch(rel)
            if m:
                groups.setdefault(f"tower.head.in_proj.{m.group(2)}", {})[m.group(1)] = (key, t)
                continue
            if _TIMM_IGNORED.fullmatch(rel):
                ignored += 1
                continue
            native = _apply(_TIMM_RULES, rel)
            if native == "tower.pos_embed" and t.dim() == 3:
                t = t.reshape(t.shape[-2], t.shape[-1])
        if native is None:
            if layout.style == "hf" and not rel.startswith(("embeddings.", "encoder.", "post_layernorm.", "head.")):
                ignored += 1  # e.g. v5 SiglipVisionModel files hold nothing else; SiglipModel text keys
            else:
                unexpected.append(key)
            continue
        put(native, key, t)

    parts_of = {"hf": ("q", "k", "v"), "timm": ("q", "kv")}[layout.style] if groups else ()
    for native, parts in groups.items():
        absent = [x for x in parts_of if x not in parts]
        if absent:
            src = next(iter(parts.values()))[0]
            for x in absent:
                if layout.style == "hf":
                    incomplete.append(re.sub(r"self_attn\.[qkv]_proj", f"self_attn.{x}_proj", src))
                else:
                    incomplete.append(re.sub(r"attn_pool\.(q|kv)\.", f"attn_pool.{x}.", src))
            continue
        put(native, " + ".join(parts[x][0] for x in parts_of), torch.cat([parts[x][1] for x in parts_of], dim=0))
    return Converted(out, origin, sorted(unexpected), sorted(incomplete), ignored)


def native_to_hf(name: str, family: str) -> list[str]:
    """The Hugging Face name(s) of a native tensor in `family`'s on-disk (hub) layout (for export and messages)."""
    prefix = {"siglip": "vision_model.", "idefics3": "model.vision_model.", "llava_next": "vision_tower.vision_model."}[family]
    if name == "image_newline":
        return ["image_newline"]
    if name.startswith("connector."):
        if family == "idefics3" and name == "connector.proj.weight":
            return ["model.connector.modality_projection.proj.weight"]
        if family == "llava_next" and name.startswith("connector.layers."):
            return ["multi_modal_projector." + name[len("connector.layers."):]]
        return [name]
    rel = name[len("tower."):]
    m = re.fullmatch(r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)", rel)
    if m:
        return [f"{prefix}encoder.layers.{m.group(1)}.self_attn.{x}_proj.{m.group(2)}" for x in "qkv"]
    inverse = [
        (r"patch_embed\.(weight|bias)", r"embeddings.patch_embedding.\1"),
        (r"pos_embed", r"embeddings.position_embedding.weight"),
        (r"blocks\.(\d+)\.norm([12])\.(weight|bias)", r"encoder.layers.\1.layer_norm\2.\3"),
        (r"blocks\.(\d+)\.attn\.proj\.(weight|bias)", r"encoder.layers.\1.self_attn.out_proj.\2"),
        (r"blocks\.(\d+)\.mlp\.(fc[12])\.(weight|bias)", r"encoder.layers.\1.mlp.\2.\3"),
        (r"post_norm\.(weight|bias)", r"post_layernorm.\1"),
        (r"head\.probe", r"head.probe"),
        (r"head\.in_proj\.(weight|bias)", r"head.attention.in_proj_\1"),
        (r"head\.out_proj\.(weight|bias)", r"head.attention.out_proj.\1"),
        (r"head\.norm\.(weight|bias)", r"head.layernorm.\1"),
        (r"head\.mlp\.(fc[12])\.(weight|bias)", r"head.mlp.\1.\2"),
    ]
    hf = _apply(inverse, rel)
    if hf is None:
        raise CheckpointError(f"export: native tensor '{name}' has no Hugging Face name")
    return [prefix + hf]


def to_hf(state: dict[str, torch.Tensor], family: str) -> dict[str, torch.Tensor]:
    """A native state dict in `family`'s Hugging Face hub layout (q/k/v split back out of `attn.qkv`)."""
    out: dict[str, torch.Tensor] = {}
    for name, t in state.items():
        names = native_to_hf(name, family)
        chunks = t.chunk(len(names), dim=0) if len(names) > 1 else (t,)
        for n, c in zip(names, chunks, strict=True):
            out[n] = c.contiguous()
    return out
