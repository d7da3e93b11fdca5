"""The LM side from the command line (subprocesses): `text.lm=true` profiles, and every bad LM input is one line
`vtlab: error: ...` naming what and what would be valid, before any work starts."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from test_cli import run_vtlab

from vtlab.api import build_vlm, make_config
from vtlab.measure.lm_side import lm_prefill_flops_closed_form, measure_lm_side
from vtlab.text.lm import hf_text_config, kv_cache_bytes_per_token

BASE = ["+model=smolvlm_debug", "text.lm=true", "logger=none", "task.warmup=0", "task.repeats=1"]


def _one_line_error(proc, *needles: str) -> str:
    assert proc.returncode != 0, proc.stdout[-2000:]
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("vtlab: error: "), proc.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def lm_dirs(tmp_path_factory):
    """A tiny Llama folder whose tokenizer lacks the image tokens, and a SigLIP vision folder (not an LM)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        PreTrainedTokenizerFast,
        SiglipVisionConfig,
        SiglipVisionModel,
    )

    conf = hf_text_config(make_config("smolvlm_debug", ["text.lm=true"]).text)
    lm = AutoModelForCausalLM.from_config(AutoConfig.for_model(conf.pop("model_type"), **conf))
    plain = tmp_path_factory.mktemp("plain_lm")
    lm.save_pretrained(plain)
    tok = Tokenizer(models.WordLevel(vocab={"<unk>": 0, "hello": 1}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>").save_pretrained(plain)
    vision = tmp_path_factory.mktemp("siglip")
    SiglipVisionModel(SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=4, image_size=32, patch_size=8)).save_pretrained(vision)
    return plain, vision


# the refused commands, run two at a time by one module fixture (each a subprocess that mostly imports); "{dir}" is
# the case's own working folder
REFUSED = {
    "lm_narrower_than_the_connector": ([*BASE, "text_hidden=32"], ["text_hidden=32", "text.hidden_size=64"]),
    "prompt_longer_than_the_context": ([*BASE, "text.max_position_embeddings=16"],
                                       ["text.max_position_embeddings=16", "4 visual"]),
    "missing_lm_checkpoint": ([*BASE, "text.weights={dir}/nope"], ["text.weights={dir}/nope", "no such file"]),
    "text_weights_without_lm": (["+model=smolvlm_debug", "logger=none", "text.lm=false", "text.weights={dir}"],
                                ["text.lm=false"]),
}


@pytest.fixture(scope="module")
def refused_runs(tmp_path_factory):
    def run(case: str):
        cwd = tmp_path_factory.mktemp(case)
        return case, (cwd, run_vtlab([a.format(dir=cwd) for a in REFUSED[case][0]], cwd))

    with ThreadPoolExecutor(2) as pool:
        return dict(pool.map(run, REFUSED))


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_lm_input_is_one_line(refused_runs, case):
    cwd, proc = refused_runs[case]
    _one_line_error(proc, *(needle.format(dir=cwd) for needle in REFUSED[case][1]))
    assert not list(cwd.glob("outputs/*/*/results.json"))


@pytest.mark.slow
def test_foreign_lm_checkpoint_and_tokenizer_without_image_tokens(lm_dirs, tmp_path):
    plain, vision = lm_dirs
    proc = run_vtlab([*BASE, f"text.weights={vision}"], tmp_path)
    _one_line_error(proc, "siglip_vision_model", "not a causal LM", "llama, granite")
    proc = run_vtlab([*BASE, f"text.weights={plain}"], tmp_path)
    _one_line_error(proc, f"text.weights={plain}", "'<image>'", "<fake_token_around_image>")


@pytest.mark.slow
def test_mismatched_and_foreign_llava15_checkpoints(tmp_path):
    """A whole LLaVA-1.5 folder whose LM does not fit the preset's, and one whose LM is no class vtlab builds."""
    from test_vlm_parity import llava15_vlm

    _, path = llava15_vlm(tmp_path / "llava")
    proc = run_vtlab(["+model=llava15_debug", f"model.weights={path}", "text.lm=true", "text.num_layers=3",
                      "logger=none"], tmp_path)
    _one_line_error(proc, f"checkpoint {path}", "language model does not fit", "model.layers.2.")
    qwen = dict(model_type="qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                num_attention_heads=4, num_key_value_heads=4, vocab_size=1000)
    _, foreign = llava15_vlm(tmp_path / "qwen", text=qwen)
    proc = run_vtlab(["+model=hf", f"model.weights={foreign}", "text.lm=true", "logger=none"], tmp_path)
    _one_line_error(proc, f"model.weights={foreign}", "text.model_type=qwen2", "llama, granite")
    assert not list(tmp_path.glob("outputs/*/*/results.json"))


@pytest.mark.slow
def test_profile_with_lm_rows(tmp_path):
    """`text.lm=true`: the prompt / lm prefill / first token rows, counted prefill FLOPs = the closed form."""
    proc = run_vtlab([*BASE, "data.image_size=[100,150]", f"out_dir={tmp_path}/run"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads((tmp_path / "run" / "results.json").read_text())
    rows = {s["name"]: s for s in r["stages"]}
    prefill = rows["lm prefill"]
    assert prefill["flops"] == prefill["flops_closed_form"] == r["lm_prefill_flops_counted"] > 0
    assert r["visual_tokens"] == r["tokens"] == 13 * 4 and r["prompt_tokens"] > r["visual_tokens"]
    assert r["ttft_ms"] > 0 and rows["first token"]["latency_ms"] == r["ttft_ms"]
    assert r["kv_cache_bytes_per_token"] == 2 * 2 * 4 * 16 * 4  # layers, kv heads, head dim, fp32
    assert r["kv_cache_mb"] == pytest.approx(r["kv_cache_bytes_per_token"] * r["prompt_tokens"] / 2**20)
    assert "time to first token" in proc.stdout


def test_lm_side_closed_form_granite_gqa():
    """GQA (8 heads / 2 kv heads) in a Granite decoder: counted prefill FLOPs = the closed form; KV bytes."""
    torch.manual_seed(0)
    vlm = build_vlm("smolvlm_debug", ["text=granite_2b", "text.num_layers=1", "text.hidden_size=64", "text.num_heads=8",
                                      "text.num_kv_heads=2", "text.intermediate_size=96", "text.vocab_size=200"])
    assert type(vlm.lm).__name__ == "GraniteForCausalLM" and vlm.lm.config.embedding_multiplier == 12.0
    out = measure_lm_side(vlm, None, "Describe this image.", torch.device("cpu"), 0, 1)["fields"]
    assert out["lm_prefill_flops_counted"] == lm_prefill_flops_closed_form(vlm.text, out["prompt_tokens"])
    assert kv_cache_bytes_per_token(vlm.text, 2) == 2 * 1 * 2 * 8 * 2


@pytest.mark.slow
def test_gpu_script_cpu_smoke(tmp_path):
    """experiments/lm_side/run.py --quick on the CPU: six cells, JSON + markdown, counted FLOPs = closed form."""
    import os
    import subprocess
    import sys

    from test_cli import REPO

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(REPO / "experiments/lm_side/run.py"), "--quick", "--device", "cpu",
                           "--warmup", "0", "--repeats", "1", "--no-compile", "--out", str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [r["visual_tokens"] for r in rows] == [64, 16, 4, 1, 171, 585]
    assert all(r["lm_prefill_flops_counted"] == r["lm_prefill_flops_closed_form"] and r["ttft_ms"] > 0 for r in rows)
    assert "| smolvlm_debug | tiny | connector.factor=8 | 1 |" in (tmp_path / "results.md").read_text()


@pytest.mark.slow
def test_bench_with_lm(tmp_path):
    proc = run_vtlab(["+model=smolvlm_debug", "task=bench", "task.modes=[eager]", "text.lm=true", "logger=none",
                      "task.iters=1", "task.latency_iters=2", "task.throughput_batch_size=2", "task.matmul_size=64",
                      f"out_dir={tmp_path}/run"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads((tmp_path / "run" / "results.json").read_text())
    assert r["ttft_ms"] > 0 and r["lm_prefill_ms"] > 0 and r["kv_cache_mb"] > 0
    assert [s["name"] for s in r["lm_stages"]] == ["prompt", "lm prefill", "first token"]
    assert "time to first token" in proc.stdout
