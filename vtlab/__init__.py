"""vtlab: configuration-driven experiments on the vision side of vision-language models."""

from vtlab.api import build, build_stack, build_vlm, compose_config, config, to_config
from vtlab.families import preprocess
from vtlab.models.stack import VisionStack

__all__ = ["VisionStack", "build", "build_stack", "build_vlm", "compose_config", "config", "preprocess", "to_config"]
__version__ = "0.1.0"
