"""Pixel unshuffle (space-to-depth) of a token grid with exactly the Idefics3 / SmolVLM channel order.

transformers' `Idefics3Connector.pixel_shuffle(x, s)` turns (B, n*n, C) into (B, (n/s)^2, s^2*C) with
`out[b, ho*(n/s)+wo, (i*s+j)*C + c] = x[b, (ho*s+i)*n + (wo*s+j), c]`: output tokens are row-major over
the coarse grid and each s x s window is packed (row-in-window, col-in-window, channel). This is the
one-step view/permute form of that map (towers-and-connectors.md c.1), generalised to rectangular grids.
"""

from __future__ import annotations

import torch


def pixel_unshuffle(x: torch.Tensor, grid: tuple[int, int], factor: int) -> torch.Tensor:
    """(B, h*w, C) row-major tokens -> (B, (h/f)*(w/f), f*f*C). `factor` must divide h and w."""
    if factor == 1:
        return x
    b, n, c = x.shape
    h, w = grid
    if h * w != n or h % factor or w % factor:
        raise ValueError(f"pixel_unshuffle: factor {factor} does not fit a {h}x{w} grid of {n} tokens")
    x = x.view(b, h // factor, factor, w // factor, factor, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // factor) * (w // factor), factor * factor * c)


def valid_factors(grid: tuple[int, int]) -> list[int]:
    """Unshuffle factors that divide both sides of a (rows, cols) grid."""
    h, w = grid
    return [f for f in range(1, min(h, w) + 1) if h % f == 0 and w % f == 0]
