"""Where checkpoint tensors come from, and reading them safely.

Mirrors what `transformers`' `from_pretrained` and `huggingface_hub`'s cache lookup do with a local path,
without any network access: a safetensors file, a folder with one or sharded safetensors files (and their
`model.safetensors.index.json`), a `hf://org/name[@revision]` id looked up in the local Hugging Face cache
only (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`), or a PyTorch/timm/Lightning
file. Nothing is ever unpickled beyond tensors: torch files go through `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from vtlab.errors import CheckpointError

TORCH_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pth.tar")
INDEX_NAME = "model.safetensors.index.json"


@dataclass
class Source:
    """A resolved checkpoint: the files that hold its tensors and the config.json beside them (if any)."""

    spec: str  # what the user wrote
    files: list[Path]
    kind: str  # "safetensors" | "torch"
    config_path: Path | None = None
    origin: str = ""  # human-readable description, e.g. "hf://org/name -> /cache/.../snapshots/abc"
    notes: list[str] = field(default_factory=list)

    def config(self) -> dict | None:
        if self.config_path is None:
            return None
        try:
            data = json.loads(self.config_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"checkpoint {self.spec}: cannot read {self.config_path}: {exc}") from None
        if not isinstance(data, dict):
            raise CheckpointError(f"checkpoint {self.spec}: {self.config_path} holds a {type(data).__name__}, not a "
                                  f"JSON object of config fields")
        return data


# ---------------------------------------------------------------------------------------------- resolving


def hf_cache_dir() -> Path:
    """The local Hugging Face hub cache, resolved as huggingface_hub does (environment first)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path("~/.cache/huggingface/hub").expanduser()


HF_REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")  # the hub's own name rule
HF_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*")  # a branch, tag or commit


def _inside(path: Path, root: Path) -> bool:
    """True when `path` (symlinks resolved) lies inside `root`."""
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def resolve_hf_id(spec: str) -> Path:
    """`hf://org/name[@revision]` -> the snapshot folder in the local cache (never downloads).

    The repo, the revision and the commit a `refs/<rev>` file names must be plain names (no `..`, no
    absolute path), and the snapshot must lie inside the cache, so a crafted id or ref cannot escape it."""
    repo, _, revision = spec[len("hf://") :].partition("@")
    revision = revision or "main"
    cache = hf_cache_dir()
    if not HF_REPO.fullmatch(repo) or ".." in repo:
        raise CheckpointError(f"model.weights={spec}: expected hf://ORG/NAME[@REVISION] (letters, digits, . _ -)")
    if not HF_REVISION.fullmatch(revision) or ".." in revision.split("/"):
        raise CheckpointError(f"model.weights={spec}: revision '{revision}' is not a branch, tag or commit name")
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    where = f"looked in {repo_dir} (cache root {cache}, from $HF_HUB_CACHE / $HF_HOME / ~/.cache/huggingface/hub)"
    if not repo_dir.is_dir():
        raise CheckpointError(
            f"model.weights={spec}: '{repo}' is not in the local Hugging Face cache ({where}). "
            f"vtlab never downloads: fetch it beforehand on a machine with access (`hf download {repo}`, the "
            f"huggingface_hub CLI; it fills the same cache, or copy the cache folder) or pass a local path."
        )
    snapshots = repo_dir / "snapshots"
    ref = repo_dir / "refs" / revision
    if ref.is_file():
        commit = ref.read_text().strip()
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", commit) or ".." in commit:
            raise CheckpointError(f"model.weights={spec}: {ref} should hold a commit hash (a snapshot name), holds "
                                  f"{commit[:80]!r}")
        snap = snapshots / commit
    elif (snapshots / revision).is_dir():
        snap = snapshots / revision
    else:
        found = sorted(p.name for p in snapshots.iterdir()) if snapshots.is_dir() else []
        if revision == "main" and len(found) == 1:
            snap = snapshots / found[0]
        else:
            raise CheckpointError(
                f"model.weights={spec}: revision '{revision}' of '{repo}' is not in the local cache ({where}); "
                f"snapshots there: {found or 'none'}"
            )
    if not snap.is_dir():
        raise CheckpointError(f"model.weights={spec}: snapshot folder {snap} is missing ({where})")
    if not _inside(snap, cache):
        raise CheckpointError(f"model.weights={spec}: snapshot {snap} resolves outside the cache {cache}; refused")
    return snap


def _folder_files(folder: Path, spec: str) -> tuple[list[Path], str, list[str]]:
    index = folder / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"checkpoint {spec}: shard index {index} is unreadable or has no weight_map ({exc})") from None
        if not isinstance(weight_map, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                       for k, v in weight_map.items()):
            raise CheckpointError(f"checkpoint {spec}: {index}: weight_map must map tensor names to shard file names "
                                  f"(strings), found {type(weight_map).__name__}")
        names = sorted(set(weight_map.values()))
        outside = [n for n in names if Path(n).is_absolute() or ".." in Path(n).parts or not _inside(folder / n, folder)]
        if outside:
            raise CheckpointError(f"checkpoint {spec}: {index} names shard files outside its folder ({outside[:3]}); "
                                  f"refused")
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise CheckpointError(
                f"checkpoint {spec}: shard(s) {missing} listed in {INDEX_NAME} are missing from {folder} "
                "(incomplete download or copy)"
            )
        return [folder / n for n in names], "safetensors", [f"{len(names)} shards from {INDEX_NAME}"]
    shards = sorted(folder.glob("*.safetensors"))
    if len(shards) == 1:
        return shards, "safetensors", []
    if len(shards) > 1:
        if (folder / "model.safetensors").is_file():
            return [folder / "model.safetensors"], "safetensors", []
        raise CheckpointError(
            f"checkpoint {spec}: {len(shards)} safetensors files in {folder} but no {INDEX_NAME} to say which "
            f"belong together ({[s.name for s in shards[:6]]}); point model.weights at one file"
        )
    torch_files = sorted(p for p in folder.iterdir() if p.name.endswith(TORCH_SUFFIXES))
    if len(torch_files) == 1:
        return torch_files, "torch", []
    listing = sorted(p.name for p in folder.iterdir())[:12]
    raise CheckpointError(
        f"checkpoint {spec}: no weights found in folder {folder}: expected model.safetensors, sharded "
        f"*.safetensors with {INDEX_NAME}, or one torch file ({', '.join(TORCH_SUFFIXES)}); found {listing or 'nothing'}"
    )


def resolve(spec: str | os.PathLike) -> Source:
    """Turn `model.weights` into a `Source`; raises `CheckpointError` naming what was looked for."""
    spec = str(spec)
    origin = spec
    if spec.startswith("hf://"):
        path = resolve_hf_id(spec)
        origin = f"{spec} -> {path}"
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            parent = path.parent
            hint = "" if parent.is_dir() else f" (its folder {parent} does not exist either)"
            raise CheckpointError(f"model.weights={spec}: no such file or folder{hint}")
    if path.is_dir():
        files, kind, notes = _folder_files(path, spec)
        config = path / "config.json"
    elif path.name in (INDEX_NAME, "config.json"):  # the index or config of a folder checkpoint: load the folder
        files, kind, notes = _folder_files(path.parent, spec)
        config = path.parent / "config.json"
    else:
        kind = "safetensors" if path.suffix == ".safetensors" else "torch"
        files, notes = [path], []
        config = path.parent / "config.json"
    return Source(spec, files, kind, config if config.is_file() else None, origin, notes)


# ---------------------------------------------------------------------------------------------- reading


def _unwrap(obj: object, spec: str) -> dict[str, torch.Tensor]:
    """A torch file's flat tensor dict: plain state dicts, Lightning/timm wrappers ('state_dict', 'model')."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "module", "state_dict_ema"):
            inner = obj.get(key)
            if isinstance(inner, dict) and any(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = inner
                break
        tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
    raise CheckpointError(
        f"checkpoint {spec}: the torch file holds no tensor state dict (found {type(obj).__name__}"
        + (f" with keys {sorted(map(str, obj))[:8]}" if isinstance(obj, dict) else "")
        + ")"
    )


MAX_INFLATION = 4  # a torch zip stores tensors uncompressed: declared sizes beyond 4x the file are a bomb


def check_declared_size(path: Path, spec: str) -> None:
    """Refuse a torch zip whose entries declare more bytes than MAX_INFLATION x its size on disk (a compressed
    bomb), before torch allocates them."""
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as zf:
            declared = sum(info.file_size for info in zf.infolist())
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {spec}: {path} cannot be read: it is truncated or corrupt ({exc})") from None
    size = path.stat().st_size
    if declared > MAX_INFLATION * size + (1 << 20):
        raise CheckpointError(f"checkpoint {spec}: refused to load {path}: its entries declare {declared / 2**20:.0f} MiB "
                              f"uncompressed in a {size / 2**20:.1f} MiB file (torch writes tensors uncompressed: "
                              f"a decompression bomb or a corrupt file)")


def _refused_global(exc: Exception) -> str:
    """The `GLOBAL module.name` torch's unpickler refused, without its advice to set weights_only=False."""
    found = re.search(r"GLOBAL ([\w.]+)", str(exc)) or re.search(r"Unsupported global: ([\w.]+)", str(exc))
    return f"GLOBAL {found.group(1)}" if found else type(exc).__name__


def torch_load(path: Path, spec: str) -> Any:
    """`torch.load(weights_only=True)` on CPU: tensors and plain data only; a pickle that would run code, or a
    corrupt file, is a CheckpointError naming the file."""
    check_declared_size(path, spec)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = _refused_global(exc)
        raise CheckpointError(
            f"checkpoint {spec}: refused to load {path}: it cannot be read safely, it contains pickled Python "
            f"objects that are not tensors or plain data ({first}). vtlab never unpickles code: it reads safetensors "
            f"files and torch files of plain tensors (torch.load(weights_only=True)); convert it to safetensors or "
            f"a plain state dict"
        ) from None
    except Exception as exc:  # noqa: BLE001 - garbage bytes surface as KeyError, IndexError, ... from the unpickler
        raise CheckpointError(f"checkpoint {spec}: {path} cannot be read: it is truncated or corrupt "
                              f"({type(exc).__name__}: {exc})") from None
    return obj


def _torch_load(path: Path, spec: str) -> dict[str, torch.Tensor]:
    return _unwrap(torch_load(path, spec), spec)


def _safetensors_open(path: Path, spec: str):
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except Exception as exc:  # safetensors raises its own SafetensorError / OSError types
        raise CheckpointError(
            f"checkpoint {spec}: {path} is truncated or corrupt, not a readable safetensors file ({exc})"
        ) from None


def read_shapes(source: Source) -> dict[str, tuple[int, ...]]:
    """Names and shapes only (safetensors headers; torch files are loaded, weights_only)."""
    if source.kind == "torch":
        return {k: tuple(v.shape) for k, v in _torch_load(source.files[0], source.spec).items()}
    shapes: dict[str, tuple[int, ...]] = {}
    for path in source.files:
        with _safetensors_open(path, source.spec) as f:
            for k in f.keys():
                shapes[k] = tuple(f.get_slice(k).get_shape())
    return shapes


def read_tensors(source: Source, keep=None) -> dict[str, torch.Tensor]:
    """All tensors (or those whose name passes `keep`), read safely; corrupt data raises `CheckpointError`."""
    if source.kind == "torch":
        tensors = _torch_load(source.files[0], source.spec)
        return {k: v for k, v in tensors.items() if keep is None or keep(k)}
    out: dict[str, torch.Tensor] = {}
    owner: dict[str, Path] = {}
    for path in source.files:
        with _safetensors_open(path, source.spec) as f:
            for k in f.keys():
                if k in owner:  # two shards hold one tensor: which copy is current cannot be told
                    raise CheckpointError(f"checkpoint {source.spec}: tensor '{k}' is in two shards, {owner[k].name} "
                                          f"and {path.name}; refused (a stale shard left beside the new ones?)")
                owner[k] = path
                if keep is None or keep(k):
                    try:
                        out[k] = f.get_tensor(k)
                    except Exception as exc:
                        raise CheckpointError(
                            f"checkpoint {source.spec}: tensor '{k}' in {path} cannot be read: the file is truncated "
                            f"or corrupt ({exc})"
                        ) from None
    return out
