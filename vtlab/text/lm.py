"""Causal LMs behind the connector, built with transformers from a `TextConfig` or loaded from local files.

`hf_text_config(text)` is the transformers config (`LlamaConfig` / `GraniteConfig` fields) a text preset
spells out; `build_lm(text)` is `AutoModelForCausalLM.from_config` of it (random weights, nothing
downloaded); `load_lm(spec)` reads a causal-LM folder or `hf://org/name` from the local HF cache
(vtlab.checkpoints.sources.resolve) with its tokenizer, and `text_fields_of(conf)` turns a checkpoint's
`text_config` back into `text.*` fields. `kv_cache_bytes_per_token` is what one token costs in the KV cache.
transformers is imported here only when an LM is built (it is the `hf` extra).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vtlab.checkpoints.sources import read_tensors, resolve
from vtlab.errors import CheckpointError, ConfigError
from vtlab.families.lm_config import FIELDS, LM_TYPES, hf_text_config, text_fields_of  # noqa: F401  (re-exported)


def _auto() -> tuple[Any, Any]:
    try:
        from transformers import AutoConfig, AutoModelForCausalLM
    except ImportError:  # pragma: no cover - the hf extra
        raise ConfigError("an LM needs transformers: pip install 'vtlab[hf]'") from None
    return AutoConfig, AutoModelForCausalLM


def build_lm(text: Any) -> torch.nn.Module:
    """A causal LM with random weights (the caller seeds torch), SDPA attention, eval mode."""
    auto_config, auto_model = _auto()
    conf = hf_text_config(text)
    hf = auto_config.for_model(conf.pop("model_type"), **conf)
    return auto_model.from_config(hf, attn_implementation="sdpa").eval()


def lm_folder(spec: str) -> Path:
    """The folder of `text.weights` (a path or hf://org/name in the local cache); CheckpointError otherwise."""
    try:
        source = resolve(spec)
    except CheckpointError as exc:
        raise CheckpointError(str(exc).replace("model.weights=", "text.weights=")) from None
    if source.config_path is None:
        raise CheckpointError(f"text.weights={spec}: no config.json beside the weights; an LM is loaded from a "
                              f"save_pretrained folder (config.json + *.safetensors + tokenizer files)")
    conf = source.config()
    model_type = conf.get("model_type")
    if model_type not in LM_TYPES:
        raise CheckpointError(f"text.weights={spec}: config.json has model_type '{model_type}', not a causal LM vtlab "
                              f"builds; valid: {', '.join(LM_TYPES)}")
    return source.config_path.parent


def load_lm(spec: str) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
    """(model, tokenizer or None, its text.* fields) of a causal-LM folder; nothing is downloaded."""
    folder = lm_folder(spec)
    auto_config, auto_model = _auto()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one-line errors and quiet runs: no "Loading weights" bars on stderr
    model = auto_model.from_pretrained(folder, local_files_only=True, attn_implementation="sdpa").eval()
    return model, tokenizer_in(folder), text_fields_of(model.config.to_dict())


def tokenizer_in(folder: Path) -> Any:
    """The tokenizer saved in `folder` (tokenizer.json / tokenizer_config.json), or None when there is none."""
    if not any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        return None
    from transformers import AutoTokenizer  # the hf extra

    return AutoTokenizer.from_pretrained(folder, local_files_only=True)


def kv_cache_bytes_per_token(text: Any, element_size: int) -> int:
    """K and V of every layer for one token: 2 * layers * kv_heads * head_dim * bytes."""
    return 2 * text.num_layers * text.num_kv_heads * (text.hidden_size // text.num_heads) * element_size


def lm_param_count(text: Any) -> int:
    """Parameters of the decoder a text preset spells out (embeddings, attention with GQA, SwiGLU MLP, RMSNorms,
    the LM head unless tied): what building it costs in memory, before anything is built."""
    h, kv = text.hidden_size, text.num_kv_heads * (text.hidden_size // text.num_heads)
    layer = h * (h + 2 * kv) + h * h + 3 * h * text.intermediate_size + 2 * h
    heads = 1 if text.tie_word_embeddings else 2
    return heads * text.vocab_size * h + text.num_layers * layer + h


def load_lm_from_vlm(lm: torch.nn.Module, spec: str, family: Any) -> int:
    """Load the LM part of a whole VLM checkpoint (keys mapped by `family.lm_key`) into `lm`, all or nothing.

    Returns the number of tensors loaded, 0 when the checkpoint holds no LM (a vision-only file: the LM stays
    as built). A tied `lm_head.weight` may be absent (it is the embedding)."""
    source = resolve(spec)
    tensors = {family.lm_key(k): v for k, v in read_tensors(source, keep=lambda k: family.lm_key(k) is not None).items()}
    if not tensors:
        return 0
    expected = lm.state_dict()
    tied = getattr(lm.config, "tie_word_embeddings", False)
    if tied:
        tensors.pop("lm_head.weight", None)
    missing = [k for k in expected if k not in tensors and not (tied and k == "lm_head.weight")]
    unexpected = [k for k in tensors if k not in expected]
    bad = [f"{k}: expected {tuple(expected[k].shape)}, found {tuple(v.shape)}" for k, v in tensors.items()
           if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    if missing or unexpected or bad:
        raise CheckpointError(f"checkpoint {spec}: its language model does not fit text '{lm.config.model_type}': "
                              f"missing {missing[:4]}, unexpected {unexpected[:4]}, shape mismatch {bad[:4]}. "
                              f"Nothing was loaded")
    lm.load_state_dict(tensors, strict=not tied)
    if tied:
        lm.tie_weights()
    return len(tensors)
