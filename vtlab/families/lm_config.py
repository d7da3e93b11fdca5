"""The LM block of a family's checkpoint: a text preset as a transformers `text_config`, and back.

`hf_text_config(text)` is the `LlamaConfig` / `GraniteConfig` dict a `text` preset spells out (what an export
writes and what vtlab.text.lm builds); `text_fields_of(conf)` turns a checkpoint's `text_config` (or a causal
LM's config.json) back into `text.*` fields (what `+model=hf` reads). Plain dictionaries: no model is built here.
"""

from __future__ import annotations

from typing import Any

from vtlab.errors import ConfigError

LM_TYPES = ("llama", "granite")  # HF decoder classes vtlab builds and counts with its closed form (GQA + SwiGLU)
FIELDS = {  # TextConfig field -> HF config key
    "hidden_size": "hidden_size", "num_layers": "num_hidden_layers", "intermediate_size": "intermediate_size",
    "num_heads": "num_attention_heads", "num_kv_heads": "num_key_value_heads", "vocab_size": "vocab_size",
    "hidden_act": "hidden_act", "rms_norm_eps": "rms_norm_eps", "rope_theta": "rope_theta",
    "max_position_embeddings": "max_position_embeddings", "tie_word_embeddings": "tie_word_embeddings",
}
EXTRA_KEYS = ("embedding_multiplier", "residual_multiplier", "attention_multiplier", "logits_scaling")

# Where `LlavaForConditionalGeneration` and `LlavaNextForConditionalGeneration` keep the LM (both alike), as
# `Family.lm_prefixes`: (checkpoint prefix, causal-LM state-dict prefix). The v5 runtime state dict holds
# `model.language_model.*` + `lm_head.*`; the hub (v4) files and v5 `save_pretrained` write
# `language_model.model.*` + `language_model.lm_head.*`, which is also what an export writes (`LLAVA_LM_HUB`).
LLAVA_LM_PREFIXES = (("model.language_model.", "model."), ("language_model.model.", "model."),
                     ("language_model.lm_head.", "lm_head."), ("lm_head.", "lm_head."))
LLAVA_LM_HUB = ("language_model.model.", "language_model.lm_head.")

# transformers' `LlamaConfig` defaults, for the fields a checkpoint's `text_config` leaves out (the hub's
# llava-hf/llava-1.5-7b-hf spells out only max_position_embeddings, rms_norm_eps and vocab_size)
TEXT_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
              "vocab_size": 32000, "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
              "hidden_act": "silu", "tie_word_embeddings": False},
}


def _v(x: Any) -> Any:
    return getattr(x, "value", x)


def hf_text_config(text: Any) -> dict[str, Any]:
    """The HF config dict (`model_type` included) of a text preset: every field spelled out."""
    model_type = str(text.model_type)
    if model_type not in LM_TYPES:
        raise ConfigError(f"text.model_type={model_type} is not supported; valid: {', '.join(LM_TYPES)}")
    conf = {"model_type": model_type, **{hf: _v(getattr(text, ours)) for ours, hf in FIELDS.items()}}
    conf.update({"attention_bias": False, "mlp_bias": False, "attention_dropout": 0.0, "head_dim": None})
    conf.update(dict(text.extra or {}))
    conf.pop("head_dim")  # = hidden // heads in both classes
    return conf


def with_text_defaults(conf: dict[str, Any]) -> dict[str, Any]:
    """A `text_config` with its config class's defaults for the fields it omits (llama only; others as given)."""
    defaults = dict(TEXT_DEFAULTS.get(str(conf.get("model_type")), {}))
    if isinstance(conf.get("rope_parameters"), dict):
        defaults.pop("rope_theta", None)  # transformers v5 keeps it there (text_fields_of reads it)
    return {**defaults, **{k: v for k, v in conf.items() if v is not None}}


def text_fields_of(conf: dict[str, Any]) -> dict[str, Any]:
    """`text.*` fields of an HF `text_config` (or a causal LM's config.json); omitted keys are left out."""
    out: dict[str, Any] = {ours: conf[hf] for ours, hf in FIELDS.items() if conf.get(hf) is not None}
    if conf.get("rope_theta") is None and isinstance(conf.get("rope_parameters"), dict):  # transformers v5
        theta = conf["rope_parameters"].get("rope_theta")
        if theta is not None:
            out["rope_theta"] = float(theta)
    if "num_heads" in out and "num_kv_heads" not in out:
        out["num_kv_heads"] = out["num_heads"]
    if conf.get("model_type"):
        out["model_type"] = str(conf["model_type"])
        out["name"] = str(conf.get("_name_or_path") or conf["model_type"]) or str(conf["model_type"])
    extra = {k: conf[k] for k in EXTRA_KEYS if conf.get(k) is not None}
    if extra:
        out["extra"] = extra
    return out
