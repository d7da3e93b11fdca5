"""nn.Modules only (no Hydra, no file reading, no Lightning): layers, SDPA control, towers, connectors, heads and
the `VisionStack` that chains them. Import the submodules directly (this package imports nothing eagerly)."""
