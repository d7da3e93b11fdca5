"""`task=bench`: every field of results.json on the tiny presets, modes, attention backend, settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from bench_helpers import run_vtlab

from vtlab.api import compose_config, to_config
from vtlab.errors import ConfigError
from vtlab.results.record import RunContext

FAST = ["task.latency_iters=3", "task.repeats=2", "task.iters=1", "task.warmup=1", "task.matmul_size=256"]


def make_ctx(out_dir: Path, model: str, *overrides: str) -> RunContext:
    raw = compose_config(model, ["task=bench", "logger=none", *overrides])
    return RunContext(cfg=to_config(raw), raw=raw, out_dir=out_dir, model_choice=model, overrides=list(overrides))


def test_bench_cli_writes_every_field(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = run_vtlab(["+model=smolvlm_debug", "task=bench", "task.modes=[eager,cudagraphs]", "logger=none",
                      f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "vtlab bench: smolvlm_debug-f4" in proc.stdout and f"results: {run_dir}" in proc.stdout
    assert "eager: throughput, batch 8" in proc.stderr  # progress lines when not on a terminal
    r = json.loads((run_dir / "results.json").read_text())
    # tokens to the LM, params and FLOPs per stage
    assert (r["task"], r["status"], r["run_name"], r["tokens"], r["patches"], r["grid"]) == (
        "bench", "ok", "smolvlm_debug-f4", 4, 64, [8, 8])
    tower, conn = r["stages"][2], r["stages"][3]
    assert tower["params"] + conn["params"] == r["params"] == r["params_tower"] + r["params_connector"]
    assert tower["flops"] == tower["flops_closed_form"] == r["flops_tower"] > 0
    assert conn["flops"] == conn["flops_closed_form"] == r["flops_connector"] == 2 * 4 * (32 * 16) * 64
    assert r["flops"] == r["flops_tower"] + r["flops_connector"]
    # latency p50/p90, throughput, memory, achieved rate and its share of the measured ceiling
    eager = r["modes"]["eager"]
    assert eager["status"] == "ok" and len(eager["latency_ms_all"]) == 20  # CPU default latency_iters
    assert 0 < r["latency_ms"] <= r["latency_ms_p90"]
    assert r["throughput_batch_size"] == 8 and r["throughput_img_s"] > 0
    assert r["throughput_tokens_s"] == pytest.approx(4 * r["throughput_img_s"])
    assert r["tflops"] == pytest.approx(r["flops"] * r["throughput_img_s"] / 1e12)
    assert r["mfu"] == pytest.approx(r["tflops"] / r["ceiling_tflops"]) and r["ceiling_tflops"] > 0
    assert r["ceiling"]["dtype"] == "float32" and "CPU" in r["ceiling"]["note"]
    assert r["peak_memory_mb"] > 0 and r["peak_memory_kind"] == "process_max_rss"
    # CUDA graphs need CUDA: recorded as skipped with the reason
    assert r["modes"]["cudagraphs"] == {"status": "skipped", "reason": r["modes"]["cudagraphs"]["reason"]}
    assert "CUDA" in r["modes"]["cudagraphs"]["reason"]
    assert r["latency_mode"] == r["throughput_mode"] == "eager"
    # what ran: device, torch, dtype, attention kernel
    assert r["device_name"] and r["torch_version"] == torch.__version__ and r["dtype"] == "float32"
    assert r["attention_backend"] in ("flash_cpu", "math") and r["attention_backend_requested"] == "auto"
    assert r["attention"]["sdpa_calls"] == 2  # two blocks
    # LM-side prefill cost for the text target (`text=tiny`: 2 layers, width 64, MLP 128, 4 heads)
    t, d, i = 4, 64, 128
    assert r["lm_prefill_flops"] == 2 * (4 * t * d * d + 4 * t * d * d + 6 * t * d * i + 2 * t * t * d)
    assert r["lm_prefill"]["name"] == "tiny"
    # the CPU defaults are recorded
    assert r["settings"]["defaults_for"] == "cpu"
    assert set(r["settings"]["defaulted"]) == {"throughput_batch_size", "iters", "latency_iters", "matmul_size"}
    assert r["config"]["task"]["name"] == "bench"


def test_bench_compile_mode_on_cpu(tmp_path: Path) -> None:
    from vtlab.tasks.bench import bench_stack

    r = bench_stack(make_ctx(tmp_path, "smolvlm_debug", "task.modes=[eager,compile]", *FAST))
    compiled = r["modes"]["compile"]
    assert compiled["status"] == "ok", compiled
    assert compiled["throughput_img_s"] > 0 and compiled["latency_ms"] > 0
    assert compiled["first_call_s"] > compiled["latency_ms"] / 1e3  # the first call compiled
    assert r["latency_mode"] in ("eager", "compile") and r["throughput_mode"] in ("eager", "compile")
    best = max(r["modes"][m]["throughput_img_s"] for m in ("eager", "compile"))
    assert r["throughput_img_s"] == best


@pytest.mark.parametrize(("backend", "ran"), [("math", "math"), ("flash", "flash_cpu")])
def test_attention_backend_is_pinned_and_recorded(tmp_path: Path, backend: str, ran: str) -> None:
    from vtlab.tasks.bench import bench_stack

    r = bench_stack(make_ctx(tmp_path, "llavanext_debug", "task.modes=[eager]", f"task.attention_backend={backend}",
                             *FAST))
    assert r["attention_backend"] == ran and r["attention_backend_requested"] == backend
    assert r["attention"]["kernels"] == {ran: 6}  # six blocks, all on the pinned kernel


def test_attention_backend_without_cpu_kernel_is_refused(tmp_path: Path) -> None:
    from vtlab.tasks.bench import bench_stack

    with pytest.raises(ConfigError, match="cudnn has no CPU kernel"):
        bench_stack(make_ctx(tmp_path, "smolvlm_debug", "task.attention_backend=cudnn"))
    with pytest.raises(ConfigError, match="task.modes"):
        bench_stack(make_ctx(tmp_path, "smolvlm_debug", "task.modes=[eager,turbo]"))


def test_bench_settings_device_defaults_and_overrides() -> None:
    from vtlab.tasks.bench import bench_settings

    task = to_config(compose_config("smolvlm_debug", ["task=bench"])).task
    cpu = bench_settings(task, torch.device("cpu"))
    cuda = bench_settings(task, torch.device("cuda"))
    assert (cpu["throughput_batch_size"], cpu["iters"], cpu["latency_iters"]) == (8, 2, 20)
    assert (cuda["throughput_batch_size"], cuda["iters"], cuda["matmul_size"]) == (64, 10, 8192)
    task = to_config(compose_config("smolvlm_debug", ["task=bench", "task.throughput_batch_size=3"])).task
    explicit = bench_settings(task, torch.device("cpu"))
    assert explicit["throughput_batch_size"] == 3 and "throughput_batch_size" not in explicit["defaulted"]
    with pytest.raises(ConfigError, match="task.iters=0"):  # refused up front now, by the schema's check
        to_config(compose_config("smolvlm_debug", ["task=bench", "task.iters=0"]))


def test_headline_takes_best_latency_and_best_throughput() -> None:
    from vtlab.tasks.bench import _headline

    def mode(lat: float, thr: float) -> dict:
        return {"status": "ok", "latency_ms": lat, "latency_ms_p90": lat * 2, "throughput_img_s": thr,
                "throughput_tokens_s": thr * 4, "throughput_batch_size": 8, "tflops": thr / 1e3, "mfu": 0.5,
                "peak_memory_mb": thr}

    h = _headline({"eager": mode(1.0, 100.0), "compile": mode(2.0, 300.0),
                   "cudagraphs": {"status": "error", "error": "boom"}})
    assert (h["latency_ms"], h["latency_mode"], h["latency_ms_p90"]) == (1.0, "eager", 2.0)
    assert (h["throughput_img_s"], h["throughput_mode"], h["peak_memory_mb"]) == (300.0, "compile", 300.0)
    assert _headline({"cudagraphs": {"status": "skipped", "reason": "cpu"}}) == {}


def test_lm_prefill_of_smolvlm_visual_tokens() -> None:
    """SmolVLM-256M: 64 tokens into SmolLM2-135M (30 layers, 576 wide, MLP 1536, 9 heads / 3 KV heads)."""
    from vtlab.measure.flops import lm_prefill

    cfg = to_config(compose_config("smolvlm", []))
    p = lm_prefill(cfg.text, 64, cfg.text_hidden)
    t, d, dkv, i = 64, 576, 192, 1536
    assert p["flops"] == 30 * (4 * t * d * d + 4 * t * d * dkv + 6 * t * d * i + 2 * t * t * d)
    assert (p["name"], p["num_layers"], p["num_kv_heads"]) == ("smollm2-135m", 30, 3)


def test_profile_output_unchanged_by_shared_costs(tmp_path: Path) -> None:
    from vtlab.tasks.profile import profile_stack

    raw = compose_config("llavanext_debug", ["logger=none"])
    r = profile_stack(RunContext(cfg=to_config(raw), raw=raw, out_dir=tmp_path, model_choice="llavanext_debug"))
    assert list(r) == ["task", "status", "run_name", "model", "factor", "connector", "grid", "image_size", "image", "tiling", "frames",
                       "tiles", "rows", "cols", "tokens_per_frame", "patches", "patches_per_frame", "tokens", "text_hidden",
                       "feature_dim", "weights", "batch_size", "dtype", "stages", "params", "flops", "flops_closed_form",
                       "latency_ms", "latency_ms_p90", "latency_ms_all", "latency_spread", "repeats_asked", "repeats_run",
                       "time_budget_s", "unstable", "stages_inconsistent", "quick", "peak_memory_mb", "peak_memory_kind",
                       "device_info", "overrides"]
    assert list(r["stages"][2]) == ["name", "shape", "detail", "params", "flops", "flops_closed_form", "latency_ms"]
    assert r["flops"] == r["flops_closed_form"] == r["stages"][2]["flops"] + r["stages"][3]["flops"]
