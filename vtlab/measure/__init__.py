"""Every number of profile and bench: timing, memory and device facts (timing), FLOPs counted and in closed form
(flops), per-image stage rows of tiled inputs (stages), the matmul ceiling (ceiling), execution modes (modes) and
progress lines (progress). Import the submodules directly."""
