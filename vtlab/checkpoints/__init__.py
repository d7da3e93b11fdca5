"""Real weights: read checkpoints from disk into a `VisionStack`, read their architecture, export the HF layout.

Format-agnostic IO; every family-specific name comes from vtlab.families.
- `load_weights(stack, path, cfg)`: safetensors file / folder (sharded with index) / `hf://org/name` from the
  local cache / timm or vtlab/Lightning torch file (weights_only), any recognised layout, all or nothing.
- `checkpoint_arch(path)`: the architecture a checkpoint describes (used by vtlab.config.from_checkpoint).
- `export_hf(stack, cfg, out_dir)`: Hugging Face layout (safetensors + config.json).
"""

from vtlab.checkpoints.arch import checkpoint_arch
from vtlab.checkpoints.export import export_hf, hf_config
from vtlab.checkpoints.layouts import Layout, detect, to_hf, to_native
from vtlab.checkpoints.loader import inspect, load_weights, native_state
from vtlab.checkpoints.sources import Source, hf_cache_dir, resolve

__all__ = ["Layout", "Source", "checkpoint_arch", "detect", "export_hf", "hf_cache_dir", "hf_config", "inspect",
           "load_weights", "native_state", "resolve", "to_hf", "to_native"]
