"""Per-image stage rows and result fields for an input image that is tiled into several tower frames.

`task=profile` and `task=bench` count FLOPs on one frame; an image of `plan.frames` frames costs that many
times as much in the tower and the connector (packing is data movement only). The rows read:
image (H x W) -> frames (F x 3 x S x S) -> patch grid (per frame) -> tower (F x N x D) -> connector
(F x t x T) -> packed (tokens x T), with FLOPs per image.
"""

from __future__ import annotations

from typing import Any

from vtlab.families.tiler import TILINGS, ImagePlan


def image_stages(frame_stages: list[dict[str, Any]], plan: ImagePlan) -> list[dict[str, Any]]:
    """The per-frame stage rows (image, patch grid, tower, connector) turned into per-image rows."""
    by_name = {s["name"]: dict(s) for s in frame_stages}
    image, grid, tower, connector = (by_name[n] for n in ("image", "patch grid", "tower", "connector"))
    f = plan.frames
    h, w = plan.size
    channels = image["shape"][1]
    rows = [
        {"name": "image", "shape": [1, channels, h, w], "detail": f"{h}x{w} RGB, tiling {plan.tiling}"},
        {"name": "frames", "shape": [f, *image["shape"][1:]], "detail": plan.describe()},
        grid | {"detail": grid["detail"] + " per frame"},
    ]
    for stage in (tower, connector):
        row = stage | {"shape": [f, *stage["shape"][1:]]}
        for key in ("flops", "flops_closed_form"):
            if key in row:
                row[key] = row[key] * f
        rows.append(row)
    rows.append({"name": "packed", "shape": [plan.tokens, connector["shape"][-1]], "detail": TILINGS[plan.tiling].packing()})
    return rows


def image_fields(plan: ImagePlan | None, patches_per_frame: int, tokens_per_frame: int) -> dict[str, Any]:
    """Flat result fields (for dashboards) describing the input image; one frame when there is no plan."""
    if plan is None:
        return {"image_size": None, "image": None, "tiling": "none", "frames": 1, "tiles": 0, "rows": 0, "cols": 0,
                "tokens_per_frame": tokens_per_frame, "patches": patches_per_frame,
                "patches_per_frame": patches_per_frame}
    detail = {k: v for k, v in plan.detail.items() if k != "layout"}
    return {"image_size": list(plan.size), "image": f"{plan.size[0]}x{plan.size[1]}", "tiling": plan.tiling, "frames": plan.frames, "tiles": plan.tiles,
            "rows": plan.rows, "cols": plan.cols, "tokens_per_frame": plan.tokens_per_frame,
            "patches": patches_per_frame * plan.frames, "patches_per_frame": patches_per_frame, "tiling_detail": detail}
