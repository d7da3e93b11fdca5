"""Where a compiled tower's wall time goes beyond its kernels: GPU busy time, idle gaps and clocks (issue 16).

The seventh session's siglip throughput record (`levers_h200_2026-12-02/call3/siglip.json`) times the native tower
with every lever at 17.38 ms per batch of 256 (14,733 img/s), while its profiled call sums to 16.1 ms of kernels:
7 % of the wall time is not in a kernel of that profile. Two explanations predict different things:
- idle gaps between kernels (launches, a host sync, the CUDA-graph input copy): the GPU is idle for part of a
  back-to-back run, and a profile of several consecutive calls shows the gaps;
- clocks: the profiled call starts from an idle GPU at boost clock, a sustained run is power-limited and every
  kernel is slower; a sustained run then shows a lower SM clock and the power draw at the board limit.

Per side (transformers compiled, timm compiled, native with every inference lever and `task.residual_gemm` under
CUDA graphs) this probe records:
- `ms_per_call`: CUDA-event timing as in run_levers.py (median of repeats x iters after warm-up);
- `single`: the kernel time of one profiled call after a sync (what run_levers.py's kernel tables show);
- `back_to_back`: `--calls` calls profiled with no sync between: the union of kernel intervals (busy), the span
  from the first kernel's start to the last one's end, the idle time inside the span and its largest gaps (with
  the kernels on either side), all per call;
- `clocks`: `nvidia-smi` sampled every 100 ms over `--sustain-s` seconds of back-to-back calls: median SM clock,
  power draw, temperature and the throttle-reason bitmask, and the same idle before.

    python experiments/gpu_speed/busy_probe.py --presets siglip --out $OUT/busy.json [--smoke]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import harness as H
import run_levers as RL  # puts this checkout first on sys.path
import torch
from torch.profiler import ProfilerActivity, profile

from vtlab.models.fastpaths import configure_fast_paths, fast_paths

SMI_FIELDS = "clocks.sm,power.draw,temperature.gpu,clocks_throttle_reasons.active"


def kernel_intervals(prof: Any) -> list[tuple[float, float, str]]:
    """(start us, end us, name) of every GPU kernel / memcpy / memset the profiler saw, in start order."""
    out = []
    for e in prof.events():
        if e.device_type.name == "CUDA" and e.time_range.end > e.time_range.start:
            out.append((float(e.time_range.start), float(e.time_range.end), e.name))
    return sorted(out)


def timeline(intervals: list[tuple[float, float, str]], calls: int, top_gaps: int = 6) -> dict[str, Any]:
    """Busy (union of intervals), span and idle time per call, and the largest idle gaps with their neighbours."""
    if not intervals:
        return {"kernels": 0}
    busy, gaps = 0.0, []
    cur_s, cur_e, last = intervals[0]  # the merged interval so far and the name of what ends it
    for s, e, name in intervals[1:]:
        if s > cur_e:  # idle from cur_e to s
            busy += cur_e - cur_s
            gaps.append((s - cur_e, last, name))
            cur_s, cur_e, last = s, e, name
        elif e > cur_e:
            cur_e, last = e, name
    busy += cur_e - cur_s
    span = intervals[-1][1] - intervals[0][0]
    kernel_sum = sum(e - s for s, e, _ in intervals)
    gaps.sort(key=lambda g: -g[0])
    return {"calls": calls, "kernels_per_call": len(intervals) / calls, "kernel_sum_ms_per_call": kernel_sum / calls / 1e3,
            "busy_ms_per_call": busy / calls / 1e3, "span_ms_per_call": span / calls / 1e3,
            "idle_ms_per_call": (span - busy) / calls / 1e3, "gaps_over_5us": sum(1 for g in gaps if g[0] > 5) / calls,
            "largest_gaps": [{"us": round(g, 2), "after": a[:90], "before": b[:90]} for g, a, b in gaps[:top_gaps]]}


def profiled(fn: Callable[[], Any], calls: int, device: torch.device) -> dict[str, Any]:
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    fn()
    H.sync(device)
    with profile(activities=acts) as prof:
        for _ in range(calls):
            fn()
        H.sync(device)
    return timeline(kernel_intervals(prof), calls)


def smi_samples(seconds: float, work: Callable[[], Any] | None, device: torch.device) -> dict[str, Any]:
    """nvidia-smi every 100 ms for `seconds`, while `work` runs back to back (None: idle): medians of each field."""
    if device.type != "cuda":
        return {"n/a": "CPU"}
    proc = subprocess.Popen(["nvidia-smi", f"--query-gpu={SMI_FIELDS}", "--format=csv,noheader,nounits", "-lms", "100",
                             "-i", str(torch.cuda.current_device())], stdout=subprocess.PIPE, text=True)
    t, calls = time.perf_counter(), 0
    while time.perf_counter() - t < seconds:
        if work is None:
            time.sleep(0.05)
        else:
            work()
            calls += 1
            if calls % 10 == 0:
                torch.cuda.synchronize()  # keep the host from queueing far ahead of the samples
    torch.cuda.synchronize()
    proc.terminate()
    text = proc.communicate(timeout=5)[0]
    rows = [[c.strip() for c in line.split(",")] for line in text.strip().splitlines() if line.count(",") == 3]
    med = {}
    for i, name in enumerate(SMI_FIELDS.split(",")[:3]):
        vals = [float(r[i]) for r in rows if r[i].replace(".", "", 1).isdigit()]
        med[name] = statistics.median(vals) if vals else None
    med["throttle_reasons"] = sorted({r[3] for r in rows})
    med["samples"], med["calls"] = len(rows), calls
    return med


def sides(run: Any, b: dict[str, Any]) -> list[tuple[str, Callable[[], Any]]]:
    x = b["x"]
    hf = run.compile(lambda t: b["hf"](pixel_values=t).last_hidden_state)
    tim = run.compile(b["timm"].forward_features)
    RL.set_levers(b["native"], patch_gemm=True)
    configure_fast_paths(b["native"], residual_gemm=True)
    native = run.graphed(b["native"])
    return [("hf_compile", lambda: hf(x)), ("timm_compile", lambda: tim(x)), ("native_residual_gemm", lambda: native(x))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="siglip")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--calls", type=int, default=8, help="consecutive calls in the back-to-back profile")
    ap.add_argument("--sustain-s", type=float, default=3.0, help="seconds of back-to-back calls sampled by nvidia-smi")
    ap.add_argument("--smoke", action="store_true", help="CPU, debug preset, eager backend")
    a = ap.parse_args()
    device = "cpu" if a.smoke else "cuda"
    res: dict[str, Any] = {"torch": torch.__version__, "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    for preset in a.presets.split(","):
        args = argparse.Namespace(device=device, budget_s=1e9, smoke=a.smoke, out=a.out.parent, batch=2 if a.smoke else 0,
                                  backend="eager" if a.smoke else "inductor", iters=1 if a.smoke else 10,
                                  repeats=1 if a.smoke else 3, warmup=1 if a.smoke else 3)
        run = RL.Run(preset, args)
        b = RL.build_inference(run)
        out: dict[str, Any] = {"batch": b["batch"], "idle": smi_samples(1.0 if not a.smoke else 0, None, run.device)}
        with torch.inference_mode():
            for name, fn in sides(run, b):
                try:
                    side: dict[str, Any] = {"ms_per_call": run.ms(fn)}
                    side["single"] = profiled(fn, 1, run.device)
                    side["back_to_back"] = profiled(fn, 1 if a.smoke else a.calls, run.device)
                    side["clocks"] = smi_samples(0 if a.smoke else a.sustain_s, fn, run.device)
                    side["ms_per_call_after"] = run.ms(fn)
                    if name.startswith("native"):
                        side["fast_paths"] = fast_paths(b["native"], run.device)
                except Exception as exc:  # one side failing must not lose the others
                    side = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
                out[name] = side
                print(preset, name, json.dumps({k: v for k, v in side.items() if k != "fast_paths"})[:600], flush=True)
        res[preset] = out
        torch._dynamo.reset()
    a.out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
