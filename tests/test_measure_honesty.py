"""Numbers that cannot be true are caught: the spread of repeats and `unstable`, stage latencies that do not
add up, a CPU matmul ceiling measured as the best of several sizes and threads that no run exceeds, and the
`task.quick` bench settings."""

from __future__ import annotations

import pytest
import torch

from vtlab.api import make_config
from vtlab.errors import ConfigError
from vtlab.measure.ceiling import matmul_ceiling, raise_to_run
from vtlab.measure.timing import spread, stage_sum_warning
from vtlab.tasks.bench import QUICK, bench_settings


def test_spread_flags_repeats_too_wide_to_trust():
    steady = spread([10.0, 10.2, 9.9, 10.1, 10.0])
    assert steady["p50"] == 10.0 and steady["min"] == 9.9 and steady["max"] == 10.2 and not steady["unstable"]
    loaded = spread([10.0, 30.0, 9.0, 11.0, 10.0])  # one repeat caught a busy machine
    assert loaded["p90"] > 20 and loaded["rel_spread"] > 0.5 and loaded["unstable"]


def test_stage_latencies_that_do_not_add_up_are_named():
    assert stage_sum_warning(3454.0, {"tower": 3000.0, "connector": 100.0}) is None
    message = stage_sum_warning(3454.0, {"tower": 4449.0, "connector": 20.0})
    assert message.startswith("stage latencies do not add up: tower 4449 ms + connector 20 ms = 4469 ms > the whole")


def test_cpu_ceiling_is_the_best_of_several_sizes_and_threads():
    ceiling = matmul_ceiling(torch.device("cpu"), torch.float32, 64, repeats=2)
    sizes = {t["size"] for t in ceiling["tried"]}
    assert sizes == {64, 128} and ceiling["tflops"] == max(t["tflops"] for t in ceiling["tried"]) > 0
    assert {t["threads"] for t in ceiling["tried"]} == {torch.get_num_threads(), max(1, torch.get_num_threads() // 2)}


def test_a_run_above_the_ceiling_raises_it_and_is_flagged():
    ceiling = {"tflops": 0.10, "note": "CPU: best float32 matmul"}
    assert raise_to_run(ceiling, [0.05, 0.08])["exceeded"] is False
    raised = raise_to_run(ceiling, [0.05, 0.156])
    assert raised["exceeded"] and raised["tflops"] == 0.156 and raised["measured_tflops"] == 0.10
    assert 0.156 / raised["tflops"] <= 1.0 and "above the matmul's" in raised["note"]


def test_quick_bench_settings():
    task = make_config("smolvlm_debug", ["task=bench", "task.quick=true"]).task
    settings = bench_settings(task, torch.device("cpu"))
    assert settings["modes"] == ["eager"] and settings["quick"] and settings["defaults_for"] == "quick"
    assert settings["latency_iters"] == QUICK["latency_iters"] and settings["throughput_batch_size"] == 2
    assert settings["warmup"] == 1 and settings["repeats"] == 3
    full = bench_settings(make_config("smolvlm_debug", ["task=bench"]).task, torch.device("cpu"))
    assert full["modes"] == ["eager", "compile", "cudagraphs"] and full["latency_iters"] == 20


def test_quick_is_refused_for_training():
    with pytest.raises(ConfigError, match=r"task.quick=true is for task=profile and task=bench.*quick_train"):
        make_config("smolvlm_debug", ["task=train", "task.quick=true"])


@pytest.mark.gpu
def test_cuda_ceiling_bounds_a_matmul_of_the_same_size():
    device = torch.device("cuda")
    ceiling = matmul_ceiling(device, torch.bfloat16, 4096, repeats=3)
    assert ceiling["dtype"] == "bfloat16" and ceiling["tflops"] > 0 and not ceiling["spread"]["unstable"]
    assert raise_to_run(ceiling, [0.5 * ceiling["tflops"]])["exceeded"] is False
