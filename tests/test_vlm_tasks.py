"""task=align / finetune / eval of VLM checkpoints: fast_dev_run, LoRA adapters, resume after a kill, controls,
generation, predictions.jsonl and each bad input's one-line message (CPU, smolvlm_debug + text=tiny)."""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from train_helpers import cli, kill_after_first_epoch, run_inproc

from vtlab.data.vqa import VQADataset
from vtlab.errors import ConfigError

# one 64 px frame (model.tiling=none: the family's split would make 17 frames of a 64 px image), 4 visual tokens
VQA = ["data=vqa", "data.qtypes=[count]", "model.tiling=none", "logger=none", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
       "data.train_size=32", "data.val_size=16", "task.batch_size=16"]
LORA = ["task=finetune", "task.train=[connector,lm,tower]", "task.lora_lm.r=4", "task.lora_tower.r=2",
        "task.lr=1e-2", "task.lm_lr=1e-2", "task.tower_lr=1e-2", "task.warmup_steps=0"]


def _result(out):
    return json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """finetune with LoRA on the LM and the tower: 2 steps, checkpoints and adapters written."""
    out = tmp_path_factory.mktemp("lora")
    result = run_inproc(out, [*VQA, *LORA, "trainer.max_epochs=1"])
    return out, result


def test_fast_dev_run_align_cli(tmp_path):
    proc = cli(["+model=smolvlm_debug", "task=align", *VQA, "trainer.fast_dev_run=true", f"out_dir={tmp_path}"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = _result(tmp_path)
    assert (r["task"], r["status"], r["global_step"], r["control"]) == ("align", "ok", 1, "none")
    assert r["trainable_params"]["lm"] == 0 and r["trainable_params"]["tower"] == 0 and r["trainable_params"]["connector"] > 0
    assert r["tokens"] == 4 and r["question_types"] == ["count"]
    assert r["chance_by_type"]["count"] == pytest.approx(0.2)  # the generator's exact level: answers 0..4


def test_finetune_with_lora_on_lm_and_tower(lora_run):
    out, r = lora_run
    assert r["task"] == "finetune" and r["global_step"] == 2
    assert set(r["lora"]) == {"lm", "tower"} and r["lora"]["lm"]["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj"]
    full_lm = sum(p.numel() for p in torch.nn.Linear(64, 64).parameters())
    assert 0 < r["trainable_params"]["lm"] < r["lm_params"] and r["trainable_params"]["tower"] > 0, r["trainable_params"]
    assert full_lm  # LoRA trains the adapters only, not the whole side
    for side in ("lm", "tower"):
        assert (out / "adapters" / side / "adapter_config.json").is_file()
        assert (out / "adapters" / side / "adapter_model.safetensors").is_file()
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["vtlab_arch"]["kind"] == "vlm" and ckpt["vtlab_train"]["train"] == ["connector", "lm", "tower"]
    assert ckpt["vtlab_vlm"]["words"] and ckpt["vtlab_vlm"]["blind"] is False


def test_eval_generates_and_adapters_reload_to_the_same_predictions(lora_run, tmp_path):
    out, _ = lora_run
    ckpt = out / "checkpoints" / "last.ckpt"
    a = run_inproc(tmp_path / "a", ["task=eval", *VQA, f"task.ckpt_path={ckpt}", "task.max_new_tokens=4"])
    run_inproc(tmp_path / "b", ["task=eval", *VQA, f"task.ckpt_path={ckpt}", "task.max_new_tokens=4",
                               f"task.adapters={out / 'adapters'}"])
    assert a["task"] == "eval" and a["trained_by"] == "finetune" and a["val_rows"] == 16
    assert set(a) >= {"val_acc", "val_acc_by_type", "answer_perplexity", "images_per_s", "generated_tokens_per_s",
                      "chance_by_type", "majority_by_type", "control"}
    assert a["answer_perplexity"] > 1 and a["images_per_s"] > 0
    rows = [json.loads(line) for line in (tmp_path / "a" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and set(rows[0]) == {"index", "qtype", "question", "answer", "prediction", "correct"}
    assert sum(r["correct"] for r in rows) / 16 == a["val_acc"]
    assert (tmp_path / "b" / "predictions.jsonl").read_text() == (tmp_path / "a" / "predictions.jsonl").read_text()


def test_adapters_hold_exactly_the_trained_lora_weights(lora_run):
    """Zeroed adapters, reloaded from <run dir>/adapters, are the checkpoint's LoRA weights again."""
    from vtlab.api import compose_config, to_config
    from vtlab.results.record import RunContext
    from vtlab.tasks.vlm_eval import load_vlm
    from vtlab.train.checkpoint import load_checkpoint
    from vtlab.train.lora import load_adapters

    out, _ = lora_run
    overrides = ["task=eval", *VQA, f"task.ckpt_path={out / 'checkpoints' / 'last.ckpt'}"]
    raw = compose_config("smolvlm_debug", overrides)
    ctx = RunContext(cfg=to_config(raw), raw=raw, out_dir=out / "x", model_choice="smolvlm_debug")
    vlm = load_vlm(ctx, load_checkpoint(str(out / "checkpoints" / "last.ckpt")), "ckpt")
    trained = {k: v.clone() for k, v in vlm.state_dict().items() if "lora_" in k}
    assert trained and any(v.abs().sum() > 0 for k, v in trained.items() if "lora_B" in k)
    with torch.no_grad():
        for k, p in vlm.named_parameters():
            if "lora_" in k:
                p.zero_()
    assert load_adapters(vlm, str(out / "adapters")) == ["lm", "tower"]
    for k, v in vlm.state_dict().items():
        if "lora_" in k:
            torch.testing.assert_close(v, trained[k], rtol=0, atol=0)


def test_controls_blind_and_pixel_probe(tmp_path):
    blind = run_inproc(tmp_path / "blind", ["task=finetune", *VQA, "trainer.fast_dev_run=true", "task.blind=true"])
    pixels = run_inproc(tmp_path / "pixels", ["task=align", *VQA, "trainer.fast_dev_run=true",
                                              "model.tower_kind=pixels"])
    assert (blind["control"], blind["tokens"]) == ("blind", 0)
    assert pixels["control"] == "pixels" and pixels["tokens"] == 4


def test_batched_greedy_decoding_matches_one_prompt_at_a_time():
    import vtlab
    from vtlab.data.vqa_batch import left_padded

    torch.manual_seed(0)
    vlm = vtlab.build_vlm("smolvlm_debug", ["text=tiny", "model.tiling=none"])
    prompts = [vlm.prompt_ids([], q)[0].tolist() for q in ("how many", "what color is the dog in this photo", "yes")]
    ids, mask = left_padded(prompts, vlm.tokenizer.pad_token_id)
    batched = vlm.decode_batch(ids, mask, None, 6, stop_at_eos=False)
    single = [vlm.decode(torch.tensor([p]), None, 6, stop_at_eos=False) for p in prompts]
    assert batched == single


class _Lengths(VQADataset):
    """Answers of 1, 3 and 60 words: the last ones do not fit a 64-token context."""

    question_types = ("count",)

    def __len__(self) -> int:
        return 48

    def text(self, i: int) -> tuple[str, str, str, str]:
        return "how many ?", " ".join(["one"] * (1, 3, 60)[i % 3]), "count", f"row{i}"

    def image(self, i: int):
        from PIL import Image

        return Image.new("RGB", (64, 64))

    def vocabulary(self) -> list[str]:
        return ["how", "many", "?", "one"]


def test_answers_longer_than_the_context_are_counted_and_the_rest_trained(tmp_path, monkeypatch, capsys):
    import vtlab.data.vqa_sets as vqa_sets

    monkeypatch.setattr(vqa_sets, "vqa_dataset", lambda data, split, size=None: _Lengths())
    r = run_inproc(tmp_path, ["task=align", *VQA, "text.max_position_embeddings=64", "trainer.max_epochs=1"])
    assert r["rows"]["train"] == {"skipped": 0, "too_long": 16, "used": 32}
    assert r["global_step"] == 2
    assert "16 longer than the LM's context text.max_position_embeddings=64; 32 used" in capsys.readouterr().err


def test_offline_tokenizer_covers_the_vocabulary_and_keeps_default_ids():
    from vtlab.text.tokenizer import offline_tokenizer

    plain, extended = offline_tokenizer(1000), offline_tokenizer(1000, extra_words=["Magenta", "squares?"])
    assert plain("how many").input_ids == extended("how many").input_ids
    assert plain.unk_token_id not in extended("magenta squares ?").input_ids
    with pytest.raises(ConfigError, match=r"text.vocab_size=150 is smaller than the offline tokenizer's 151 tokens"):
        offline_tokenizer(150, extra_words=["zebra"])


@pytest.mark.slow  # ~30-55 s of subprocesses: run by the README's full test command
def test_resume_after_kill_matches_uninterrupted_run(tmp_path):
    common = ["+model=smolvlm_debug", "task=finetune", *VQA, "data.train_size=128", "trainer.max_epochs=3",
              "task.keep_every_n_epochs=1", "trainer.deterministic=true", "task.lora_lm.r=4",
              "task.train=[connector,lm]"]
    full = tmp_path / "full"
    proc = cli([*common, f"out_dir={full}"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    killed = tmp_path / "killed"
    resume = kill_after_first_epoch(common, killed)
    proc = cli([*common, f"out_dir={killed}", f"task.ckpt_path={resume}"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    a, b = _result(full), _result(killed)
    assert b["resumed_from"] == str(resume) and a["global_step"] == b["global_step"] == 3 * 128 // 16
    assert a["val_acc"] == b["val_acc"] and a["val_acc_by_type"] == b["val_acc_by_type"]
    assert b["val_loss"] == pytest.approx(a["val_loss"], abs=1e-6)
    assert b["train_loss"] == pytest.approx(a["train_loss"], abs=1e-6)
    sa = torch.load(full / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    sb = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], atol=1e-6, rtol=0, msg=key)


# ---------------------------------------------------------------------------------------------- bad input
BAD = [
    (["task=finetune", "task.train=[connector,nope]"],
     "task.train contains 'nope', not a part of the VLM; valid: connector, lm, tower"),
    (["task=finetune", "task.train=[connector,lm]", "task.lora_lm.r=4", "task.lora_lm.target_modules=[q_proj,qkv]"],
     "task.lora_lm.target_modules contains 'qkv', not a linear layer of the lm (LlamaForCausalLM); valid: down_proj,"),
    (["task=align", "data=synthetic"],
     "task=align trains on text answers, but data.kind=synthetic has class labels only; valid: vqa, easy_vqa, "),
    (["task=align", "text.vocab_size=150"],
     "text.vocab_size=150 is smaller than the offline tokenizer's"),
    (["task=align", "text.max_position_embeddings=8"],
     "rows fit the LM's context text.max_position_embeddings=8"),
]


BAD_IDS = ["train_part", "lora_target", "align_synthetic", "vocab_size", "context"]


@pytest.fixture(scope="module")
def bad_input_runs(tmp_path_factory):
    """Every bad-input command of BAD, two at a time (each a single-threaded subprocess on a 2-core machine)."""
    def run(case: int):
        out = tmp_path_factory.mktemp(BAD_IDS[case])
        return case, cli(["+model=smolvlm_debug", *VQA, *BAD[case][0], f"out_dir={out}"])

    with ThreadPoolExecutor(2) as pool:
        return dict(pool.map(run, range(len(BAD))))


@pytest.mark.parametrize(("case", "message"), [(i, m) for i, (_, m) in enumerate(BAD)], ids=BAD_IDS)
def test_bad_input_is_one_line(bad_input_runs, case, message):
    proc = bad_input_runs[case]
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("vtlab: error: ") and message in line, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


@pytest.mark.slow  # ~30-55 s of subprocesses: run by the README's full test command
def test_eval_refuses_a_checkpoint_of_the_other_kind(lora_run, tmp_path):
    out, _ = lora_run
    proc = cli(["+model=smolvlm_debug", "task=eval", *VQA, "data=synthetic", "data.qtypes=null",
                f"task.ckpt_path={out / 'checkpoints' / 'last.ckpt'}", f"out_dir={tmp_path / 'a'}"])
    assert proc.returncode == 2 and "(VLM) checkpoint, evaluated by generating answers, but data.kind=synthetic" \
        in proc.stderr.splitlines()[-1], proc.stderr[-2000:]
    fake = tmp_path / "classifier.ckpt"
    torch.save({"state_dict": {}, "vtlab_arch": {"model": {"name": "smolvlm-debug"}}}, fake)
    proc = cli(["+model=smolvlm_debug", "task=eval", *VQA, f"task.ckpt_path={fake}", f"out_dir={tmp_path / 'b'}"])
    assert proc.returncode == 2 and "is a task=train (classifier) checkpoint, but data.kind=vqa has text answers" \
        in proc.stderr.splitlines()[-1], proc.stderr[-2000:]


# ---------------------------------------------------------------------------------------------- learning
# The recipe (CPU, measured on this 2-core machine): smolvlm_debug + text=tiny from scratch, one 64 px frame,
# factor 1 (64 visual tokens), everything trained (finetune, train=[connector,lm,tower]) at lr 1e-3, 2048 train
# rows, batch 32, 5 epochs (320 steps), the count type's easy end (0-4 glyphs of 9 px, no distractors): val exact
# match 0.437 at step 127 and 0.664 at step 319 (chance 0.20); with factor 2 (16 tokens) it left chance only at
# step ~319 (0.414) and stayed there within 384 steps in the test's first run.
RECIPE = ["task=finetune", "task.train=[connector,lm,tower]", *VQA[:-3], "data.train_size=2048", "data.val_size=256",
          "data.count_distractors=0", "data.count_glyph_size=9",  # the count type's easy end: count 9 px glyphs
          "task.batch_size=32", "trainer.max_epochs=5", "connector.factor=1", "task.lr=1e-3", "task.lm_lr=1e-3",
          "task.tower_lr=1e-3"]


@pytest.mark.slow
def test_tiny_vlm_beats_the_blind_baseline_on_counting(tmp_path):
    """The generator's count questions at their easy end (0-4 glyphs of 9 px, no distractors), 64 px images."""
    start = time.perf_counter()
    seeing = run_inproc(tmp_path / "vlm", RECIPE)
    blind = run_inproc(tmp_path / "blind", [*RECIPE, "task.blind=true"])
    wall = time.perf_counter() - start
    print(f"vlm {seeing['val_acc_by_type']} blind {blind['val_acc_by_type']} chance {seeing['chance_by_type']} "
          f"in {wall:.0f}s")
    assert blind["control"] == "blind" and seeing["control"] == "none"
    assert seeing["val_acc_by_type"]["count"] >= blind["val_acc_by_type"]["count"] + 0.2
    assert seeing["val_acc_by_type"]["count"] >= 2 * seeing["chance_by_type"]["count"]
    if os.getloadavg()[0] <= (os.cpu_count() or 2):  # an unshared machine: both trainings within 3 minutes
        assert wall < 180, wall
