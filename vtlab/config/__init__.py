"""Configuration: typed schemas (schema), the shipped presets (presets), validation (validate), composition of
`conf/` + overrides into a validated `VTLabConfig` (compose), and `+model=hf` (from_checkpoint)."""

from vtlab.config.presets import config_dir, group_options, model_names
from vtlab.config.schema import VTLabConfig, patch_grid, register_configs, valid_factors

__all__ = ["VTLabConfig", "config_dir", "group_options", "model_names", "patch_grid", "register_configs",
           "valid_factors"]
