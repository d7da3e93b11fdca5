"""Checkpoint key layouts: recognise one from its tensor names and map it to vtlab's native names (and back).

The rule engine is here; the Hugging Face layouts and their key tables belong to the families
(`Family.detect`, `tower_key_to_native`, `connector_key_to_native`, and the inverses; vtlab.families). Two
layouts have no owning upstream model and live here:
- timm `vit_*_siglip_*` (fused `attn.qkv`, `pos_embed` (1, N, D), `attn_pool.{latent,q,kv,proj,norm,mlp}`):
  `attn_pool.q` + `attn_pool.kv` become `head.in_proj` (rows q, k, v), as `nn.MultiheadAttention` stores them;
- vtlab itself (`tower.*`, `connector.*`, `image_newline`, possibly under a Lightning module prefix).
HF q/k/v projections are fused into `attn.qkv` (rows q, k, v). Text models are ignored.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

import torch

from vtlab.errors import CheckpointError
from vtlab.families import FAMILIES, Layout, get_family
from vtlab.models.keymap import apply_rules

HF_PATCH = "embeddings.patch_embedding.weight"
TIMM_PATCH = "patch_embed.proj.weight"
VTLAB_PATCH = "tower.patch_embed.weight"


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
    for family in sorted(FAMILIES.values(), key=lambda f: f.detect_order):
        found = family.detect_keys(keys, keyset)  # towers whose names are not SigLIP's (CLIP, DINOv2, timm CLIP)
        if found is not None:
            return found
    hf = [k[: -len(HF_PATCH)] for k in keys if k.endswith(HF_PATCH)]
    if hf:
        p = min(hf, key=len)
        for family in sorted(FAMILIES.values(), key=lambda f: f.detect_order):
            found = family.detect(keys, keyset, p)
            if found is not None:
                return found
        known = "; ".join(f"{f.name}: '{f.hub_prefix}'" for f in FAMILIES.values())
        raise CheckpointError(
            f"checkpoint {spec}: layout not recognised: found a SigLIP-style tower under '{p}', which no family "
            f"owns (hub tower prefixes: {known}). {_prefix_summary(keys)}"
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
        f"checkpoint {spec}: layout not recognised (no tower of the families {', '.join(FAMILIES)}, no timm "
        f"vit_*_siglip_* and no vtlab tower found). Found: {_prefix_summary(keys)}"
    )


# ---------------------------------------------------------------------------------------------- HF <-> native

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


def to_native(layout: Layout, tensors: dict[str, torch.Tensor]) -> Converted:
    """Map a checkpoint's tensors (any recognised layout) to vtlab's native state-dict names."""
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    unexpected: list[str] = []
    incomplete: list[str] = []
    groups: dict[str, dict[str, tuple[str, torch.Tensor]]] = {}
    cgroups: dict[str, dict[str, tuple[str, torch.Tensor]]] = {}  # fused connector tensors, parts in family order
    ignored = 0
    p, cp = layout.prefix, layout.connector_prefix
    family = get_family(layout.family) if layout.family else None
    mapped = family.convert(layout, tensors) if family is not None else None
    if mapped is not None:
        return Converted(*mapped)

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
            fused = family.connector_fused_key(key[len(cp):]) if family is not None else None
            if fused is not None:  # e.g. Idefics2's perceiver k_proj + v_proj -> one kv GEMM
                cgroups.setdefault(fused[0], {})[fused[1]] = (key, t)
                continue
            native = family.connector_key_to_native(key[len(cp):]) if family is not None else None
            if native is None:
                unexpected.append(key)
            else:
                put(native, key, t)
            continue
        if not key.startswith(p):
            ignored += 1
            continue
        rel = key[len(p):]
        if layout.style == "hf":
            m = family.qkv_pattern.fullmatch(rel) if family is not None and family.qkv_pattern else None
            if m:
                groups.setdefault(f"tower.blocks.{m.group(1)}.attn.qkv.{m.group(3)}", {})[m.group(2)] = (key, t)
                continue
            native = family.tower_key_to_native(rel) if family is not None else None
        else:
            m = _TIMM_POOL_QKV.fullmatch(rel)
            if m:
                groups.setdefault(f"tower.head.in_proj.{m.group(2)}", {})[m.group(1)] = (key, t)
                continue
            if _TIMM_IGNORED.fullmatch(rel):
                ignored += 1
                continue
            native = apply_rules(_TIMM_RULES, rel)
            if native == "tower.pos_embed" and t.dim() == 3:
                t = t.reshape(t.shape[-2], t.shape[-1])
        if native is None:
            if layout.style == "hf" and family is not None and not rel.startswith(family.tower_roots):
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
    for native, parts in cgroups.items():
        order = family.connector_fused_parts if family is not None else ()
        absent = [x for x in order if x not in parts]
        if absent:
            incomplete.extend(f"{native} (part {x})" for x in absent)
            continue
        put(native, " + ".join(parts[x][0] for x in order), torch.cat([parts[x][1] for x in order], dim=0))
    return Converted(out, origin, sorted(unexpected), sorted(incomplete), ignored)


def native_to_hf(name: str, family_name: str) -> list[str]:
    """The Hugging Face name(s) of a native tensor in the family's hub layout (for export and messages)."""
    family = get_family(family_name)
    if name == "image_newline":
        return ["image_newline"]
    if name.startswith("connector."):
        fused = family.connector_fused_to_hf(name)
        return fused if fused is not None else [family.connector_native_to_hf(name) or name]
    own = family.native_names(name)
    if own is not None:
        return own
    rel = name[len("tower."):]
    m = re.fullmatch(r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)", rel)
    if m:
        return [f"{family.hub_prefix}encoder.layers.{m.group(1)}.self_attn.{x}_proj.{m.group(2)}" for x in "qkv"]
    hf = family.tower_native_to_hf(rel)
    if hf is None:
        raise CheckpointError(f"export: native tensor '{name}' has no Hugging Face name")
    return [family.hub_prefix + hf]


def to_hf(state: dict[str, torch.Tensor], family: str, cfg: object = None) -> dict[str, torch.Tensor]:
    """A native state dict in the family's Hugging Face hub layout (q/k/v split back out of `attn.qkv`)."""
    own = get_family(family).export_state(state, cfg)
    if own is not None:
        return own
    out: dict[str, torch.Tensor] = {}
    for name, t in state.items():
        names = native_to_hf(name, family)
        chunks = t.chunk(len(names), dim=0) if len(names) > 1 else (t,)
        for n, c in zip(names, chunks, strict=True):
            out[n] = c.contiguous()
    return out
