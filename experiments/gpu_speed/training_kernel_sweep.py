"""Launch settings of vtlab's training kernels at the presets' training shapes, against Inductor (issue 16).

The ninth session's call 1 (`levers_h200_2026-12-02c/call1/llavanext.json`) profiled llavanext's full fine-tuning
step with `task.fused_norm` and `task.gelu_kernel`: `bias_gelu_bwd` took 0.58 ms per call over three
(46656 x 4304) bf16 tensors (~2.1 TB/s) and `add_ln_bwd` 0.29 ms per call. Both backward kernels run
BACKWARD_PROGRAMS_PER_SM = 4 programs of 4 warps per multiprocessor, each looping over rows: 16 warps per SM, which
may be too few to hide memory latency. (Call 3 ran this sweep; vtlab.models.kernels' launches are its fastest since.) This sweep times, per preset shape (batch x tokens rows; width; MLP width):
- `bias_gelu_fwd` per (rows, columns, warps) tile, and Inductor's compiled bias + tanh GELU;
- `bias_gelu_bwd` per tile and programs per SM, and Inductor's compiled GELU backward + bias-gradient sum;
- `add_ln_bwd` (fp32 residual, bf16 branch: bf16 autocast) per (rows per program, warps) and programs per SM, and
  Inductor's compiled LayerNorm backward with the residual's gradient added;
each as the median of 3 repeats of 20 back-to-back calls (CUDA events), with its bytes moved per TB/s and its error
against Inductor's. Per preset, `choice` holds the fastest launch of each kernel; run_levers.py
`--train-kernel-launch FILE` sets vtlab.models.kernels' launches to it (`load_choice`) before timing a step.

    python experiments/gpu_speed/training_kernel_sweep.py --out $OUT/train_kernels.json [--presets llavanext]
    python experiments/gpu_speed/training_kernel_sweep.py --smoke --out /tmp/tk.json   # CPU: Triton's interpreter
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if "--smoke" in sys.argv:  # before Triton is imported: its CPU interpreter
    os.environ["TRITON_INTERPRET"] = "1"

import harness as H
import torch
import torch.nn.functional as F

from vtlab.models import kernels as K

SHAPES = {  # preset: (rows = batch x tokens of the training step, width, MLP width)
    "siglip": (256 * 196, 768, 3072),
    "smolvlm": (64 * 1024, 768, 3072),
    "llavanext": (64 * 729, 1152, 4304),
}
GELU_TILES = [(8, 512, 4), (32, 128, 4), (16, 256, 4), (32, 256, 8), (64, 128, 8), (16, 512, 8)]
PROGRAMS_PER_SM = [32, 8, 4, 16]
LN_LAUNCHES = [(2, 4), (4, 4), (1, 4), (4, 8), (2, 8)]  # (rows per program, warps)


def default_keys(width: int, rows: int) -> dict[str, str]:
    """The sweep keys of vtlab.models.kernels' own launches at this shape (what `default_ms` reports)."""
    per_program, warps, per_sm = K.ln_backward_launch(width, rows)
    return {"gelu_fwd": "x".join(map(str, K.GELU_FWD_LAUNCH)),
            "gelu_bwd": "x".join(map(str, K.GELU_BWD_LAUNCH[:3])) + f"_pps{K.GELU_BWD_LAUNCH[3]}",
            "ln_bwd": f"r{per_program}w{warps}_pps{per_sm}"}


def timed(fn: Callable[[], Any], device: torch.device, iters: int, repeats: int) -> float:
    """Median ms per call of `iters` back-to-back calls, after two warm-up calls (harness.time_per_call_ms)."""
    return statistics.median(H.time_per_call_ms(fn, device, 2, iters, repeats))


def entry(ms: float, nbytes: int) -> dict[str, float]:
    return {"ms": ms, "tb_s": nbytes / (ms * 1e-3) / 1e12}


def gelu_inductor(u: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.gelu(u.float() + b.float(), approximate="tanh").to(u.dtype)


def gelu_bwd_inductor(dy: torch.Tensor, u: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    du = torch.ops.aten.gelu_backward(dy.float(), u.float() + b.float(), approximate="tanh")
    return du.to(u.dtype), du.sum(0)


def ln_bwd_inductor(dy: torch.Tensor, dh: torch.Tensor, h: torch.Tensor, w: torch.Tensor, mean: torch.Tensor,
                    rstd: torch.Tensor) -> tuple[torch.Tensor, ...]:
    xhat = (h - mean[:, None]) * rstd[:, None]
    g = dy.float() * w
    dx = (g - xhat * (xhat * g).mean(1, keepdim=True) - g.mean(1, keepdim=True)) * rstd[:, None] + dh
    return dx, dx.to(dy.dtype), (dy.float() * xhat).sum(0), dy.float().sum(0)


def sweep_gelu(out: dict[str, Any], rows: int, hidden: int, device: torch.device, compile_: Callable,
               iters: int, repeats: int) -> None:
    """bias_gelu's forward and backward per launch, and Inductor's, at (rows, hidden) in bf16."""
    u = torch.randn(rows, hidden, device=device, dtype=torch.bfloat16)
    b = torch.randn(hidden, device=device, dtype=torch.bfloat16) * 0.1
    dy = torch.randn(rows, hidden, device=device, dtype=torch.bfloat16)
    nbytes = u.numel() * 2
    ref = gelu_inductor(u, b)
    ref_du, ref_db = gelu_bwd_inductor(dy, u, b)
    fwd0, bwd0 = K.GELU_FWD_LAUNCH, K.GELU_BWD_LAUNCH
    try:
        f, fb = compile_(gelu_inductor), compile_(gelu_bwd_inductor)
        out["gelu_fwd"]["inductor"] = entry(timed(lambda: f(u, b), device, iters, repeats), 2 * nbytes)
        out["gelu_bwd"]["inductor"] = entry(timed(lambda: fb(dy, u, b), device, iters, repeats), 3 * nbytes)
        for tile in GELU_TILES:
            K.GELU_FWD_LAUNCH = tile
            key = "x".join(map(str, tile))
            y = K._bias_gelu_fwd_op(u, b)
            err = ((y.float() - ref.float()).norm() / ref.float().norm()).item()
            out["gelu_fwd"][key] = {**entry(timed(lambda: K._bias_gelu_fwd_op(u, b), device, iters, repeats),
                                             2 * nbytes), "rel_err_vs_inductor": err}
            for pps in PROGRAMS_PER_SM:
                K.GELU_BWD_LAUNCH = (*tile, pps)
                du, db = K._bias_gelu_bwd_op(dy, u, b)
                err = ((du.float() - ref_du.float()).norm() / ref_du.float().norm()).item()
                db_err = ((db.float() - ref_db).norm() / ref_db.norm()).item()
                out["gelu_bwd"][f"{key}_pps{pps}"] = {
                    **entry(timed(lambda: K._bias_gelu_bwd_op(dy, u, b), device, iters, repeats), 3 * nbytes),
                    "rel_err_vs_inductor": err, "db_rel_err": db_err}
    finally:
        K.GELU_FWD_LAUNCH, K.GELU_BWD_LAUNCH = fwd0, bwd0


def sweep_ln(out: dict[str, Any], rows: int, width: int, device: torch.device, compile_: Callable,
             iters: int, repeats: int) -> None:
    """add_ln_bwd under bf16 autocast (h, the residual's gradient and dx in fp32, dy and dbranch in bf16) per
    launch, and Inductor's LayerNorm backward with the residual's gradient added."""
    f32, bf = torch.float32, torch.bfloat16
    h = torch.randn(rows, width, device=device, dtype=f32)
    dh = torch.randn(rows, width, device=device, dtype=f32)
    dy = torch.randn(rows, width, device=device, dtype=bf)
    w = torch.randn(width, device=device, dtype=f32)
    var, mean = torch.var_mean(h, dim=1, correction=0)
    rstd = torch.rsqrt(var + 1e-6)
    nbytes = rows * width * (4 + 4 + 2 + 4 + 2)  # reads h, dh, dy; writes dx, dbranch
    ref_dx = ln_bwd_inductor(dy, dh, h, w, mean, rstd)[0]
    table0 = dict(K.LN_BACKWARD_TABLE)

    def call() -> Any:
        return K._add_ln_bwd_op(dy, dh, h, w, mean, rstd, f32, bf)

    try:
        fl = compile_(ln_bwd_inductor)
        out["ln_bwd"]["inductor"] = entry(timed(lambda: fl(dy, dh, h, w, mean, rstd), device, iters, repeats), nbytes)
        for (per_program, warps), pps in itertools.product(LN_LAUNCHES, PROGRAMS_PER_SM):
            K.LN_BACKWARD_TABLE[(width, rows)] = (per_program, warps, pps)
            err = ((call()[0] - ref_dx).norm() / ref_dx.norm()).item()
            out["ln_bwd"][f"r{per_program}w{warps}_pps{pps}"] = {**entry(timed(call, device, iters, repeats), nbytes),
                                                                  "rel_err_vs_inductor": err}
    finally:
        K.LN_BACKWARD_TABLE.clear()
        K.LN_BACKWARD_TABLE.update(table0)


def sweep(shape: tuple[int, int, int], device: torch.device, smoke: bool, iters: int, repeats: int) -> dict[str, Any]:
    rows, width, hidden = shape
    torch.manual_seed(0)
    compile_: Callable = (lambda f: f) if smoke else torch.compile
    out: dict[str, Any] = {"rows": rows, "width": width, "hidden": hidden, "gelu_fwd": {}, "gelu_bwd": {}, "ln_bwd": {}}
    sweep_gelu(out, rows, hidden, device, compile_, iters, repeats)
    sweep_ln(out, rows, width, device, compile_, iters, repeats)
    defaults = default_keys(width, rows)
    for part in ("gelu_fwd", "gelu_bwd", "ln_bwd"):
        ours = {k: v for k, v in out[part].items() if k != "inductor"}
        best = min(ours, key=lambda k: ours[k]["ms"])
        out[part + "_best"] = {"launch": best, "ms": ours[best]["ms"], "inductor_ms": out[part]["inductor"]["ms"],
                               "default": defaults[part], "default_ms": ours.get(defaults[part], {}).get("ms")}
    out["choice"] = {"gelu_fwd": parse(out["gelu_fwd_best"]["launch"]), "gelu_bwd": parse(out["gelu_bwd_best"]["launch"]),
                     "ln_bwd": [width, rows, *parse(out["ln_bwd_best"]["launch"])]}
    return out


def parse(key: str) -> list[int]:
    """'16x256x4_pps8' -> [16, 256, 4, 8]; 'r4w4_pps8' -> [4, 4, 8]: the launch tuple of a sweep key."""
    return [int(t) for t in key.replace("r", "").replace("w", "x").replace("_pps", "x").split("x")]


def load_choice(path: Path, preset: str) -> dict[str, Any]:
    """Set vtlab.models.kernels' training launches to the sweep's fastest at `preset`'s shape (run_levers.py
    `--train-kernel-launch`); returns what it set."""
    choice = json.loads(path.read_text())[preset]["choice"]
    K.GELU_FWD_LAUNCH = tuple(choice["gelu_fwd"])
    K.GELU_BWD_LAUNCH = tuple(choice["gelu_bwd"])
    width, rows, *launch = choice["ln_bwd"]
    K.LN_BACKWARD_TABLE[(width, rows)] = tuple(launch)
    return choice


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--presets", default="llavanext,siglip,smolvlm")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="CPU, Triton's interpreter, tiny shapes")
    a = ap.parse_args()
    device = torch.device("cpu" if a.smoke else "cuda")
    if a.smoke:
        global GELU_TILES, PROGRAMS_PER_SM, LN_LAUNCHES
        GELU_TILES, PROGRAMS_PER_SM, LN_LAUNCHES = GELU_TILES[:2], PROGRAMS_PER_SM[:2], LN_LAUNCHES[:2]
    res: dict[str, Any] = {"torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                           "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                           "defaults": {"GELU_FWD_LAUNCH": K.GELU_FWD_LAUNCH, "GELU_BWD_LAUNCH": K.GELU_BWD_LAUNCH,
                                        "BACKWARD_PROGRAMS_PER_SM": K.BACKWARD_PROGRAMS_PER_SM,
                                        "BACKWARD_ROWS_NARROW": K.BACKWARD_ROWS_NARROW}}
    for preset in a.presets.split(","):
        shape = (40, 48, 200) if a.smoke else SHAPES[preset]
        try:
            res[preset] = sweep(shape, device, a.smoke, 1 if a.smoke else a.iters, 1 if a.smoke else a.repeats)
        except Exception as exc:  # one shape failing must not lose the others
            res[preset] = f"error: {type(exc).__name__}: {str(exc)[:300]}"
        print(preset, json.dumps({k: v for k, v in res[preset].items() if k.endswith("_best")}
                                 if isinstance(res[preset], dict) else res[preset]), flush=True)
        a.out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
