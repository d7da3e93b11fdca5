"""Issue 15, data half: the synthetic VQA generator, easy-VQA, the LLaVA-style conversations folder, the offline
tokenizer's coverage of their words, and every bad input's one-line message.

The generator is checked against its own pixels: glyphs are counted as 8-connected bright components (shapes
sit in cells with a blank last row and column, so two never touch), the OCR string is decoded back from the
bitmap masks, the spatial answer is read from the asked cell. CLI messages are checked in-process through the
CLI's own pre-flight checks; the subprocess runs (one line on stderr, exit 2) are `slow`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vtlab.api import compose_config, to_config
from vtlab.config.schema import DataConfig, DataKind
from vtlab.data.bitmap_font import CHARSET, char_mask, read_mask, text_mask
from vtlab.data.conversations import Conversations
from vtlab.data.easyvqa import EasyVQA
from vtlab.data.vqa import VQASample, check_answer_lengths, words
from vtlab.data.vqa_sets import vqa_dataset
from vtlab.data.vqa_synthetic import COLORS, QTYPES, SHAPES, VOCABULARY, SyntheticVQA, VQASpec, shape_mask
from vtlab.errors import ConfigError, DataError
from vtlab.text.tokenizer import offline_tokenizer

REPO = Path(__file__).resolve().parents[1]


def lit(img: np.ndarray) -> np.ndarray:
    """Shape pixels: the background noise stays below 48, every palette colour has a channel above 200."""
    return img.max(axis=2) > 100


def components(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    """8-connected components of a boolean mask (pixel lists)."""
    seen = np.zeros_like(mask)
    out = []
    for y, x in zip(*np.nonzero(mask), strict=True):
        if seen[y, x]:
            continue
        stack, comp = [(y, x)], []
        seen[y, x] = True
        while stack:
            cy, cx = stack.pop()
            comp.append((cy, cx))
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = cy + dy, cx + dx
                    if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        stack.append((ny, nx))
        out.append(comp)
    return out


def only(qtype: str, n: int = 40, **knobs) -> SyntheticVQA:
    return SyntheticVQA(VQASpec(64, qtypes=(qtype,), **knobs), n, "train", seed=3)


# ------------------------------------------------------------------------------------------------ generator
def test_same_index_gives_the_same_sample_and_nothing_is_stored():
    a, b = SyntheticVQA(VQASpec(64), 16, "train", 0), SyntheticVQA(VQASpec(64), 16, "train", 0)
    for i in range(16):
        assert np.array_equal(a.raw(i), b.raw(i)) and a.text(i) == b.text(i)
    sample = a[5]
    assert isinstance(sample, VQASample) and sample.image.size == (64, 64) and sample.image.mode == "RGB"
    assert (sample.question, sample.answer, sample.qtype, sample.id) == a.text(5) and sample.id == "train/5"
    assert not np.array_equal(a.raw(0), SyntheticVQA(VQASpec(64), 16, "train", 1).raw(0))
    assert not np.array_equal(a.raw(0), SyntheticVQA(VQASpec(64), 16, "val", 0).raw(0))
    with pytest.raises(IndexError):
        a[16]


def test_types_cycle_and_answers_are_balanced_with_exact_chance():
    spec = VQASpec(64)
    ds = SyntheticVQA(spec, 4 * 110, "val", 0)  # 110 = a multiple of every type's answer count (5, 11, 2)
    by_type: dict[str, Counter] = {}
    for i in range(len(ds)):
        question, answer, qtype, _ = ds.text(i)
        assert qtype == QTYPES[i % 4]
        by_type.setdefault(qtype, Counter())[answer] += 1
    assert ds.question_types == QTYPES
    for qtype in ("count", "spatial", "compare"):
        answers = ds.answer_set(qtype)
        assert set(by_type[qtype]) == set(answers) and len(set(by_type[qtype].values())) == 1, by_type[qtype]
    assert ds.answer_set("count") == ("0", "1", "2", "3", "4") and ds.chance("count") == 0.2
    assert ds.answer_set("spatial") == (*COLORS, *SHAPES) and ds.chance("spatial") == pytest.approx(2 / 11)
    assert ds.answer_set("compare") == ("left", "right") and ds.chance("compare") == 0.5
    assert ds.answer_set("ocr") is None and ds.chance("ocr") == pytest.approx(len(CHARSET) ** -3)
    ocr = [a for a in by_type["ocr"]]
    assert all(len(a.split()) == 3 and all(c in CHARSET for c in a.split()) for a in ocr)
    with pytest.raises(KeyError, match="no question type 'nope'"):
        ds.chance("nope")


def test_count_answer_is_what_is_drawn_and_its_knobs_change_the_drawing():
    bare = only("count", count_distractors=0)
    for i in range(10):
        assert len(components(lit(bare.raw(i)))) == int(bare.text(i)[1])
    cluttered = only("count", count_distractors=6)
    assert [len(components(lit(cluttered.raw(i)))) for i in range(5)] == [int(cluttered.text(i)[1]) + 6 for i in range(5)]
    for g in (5, 9):
        ds = only("count", count_glyph_size=g, count_distractors=3)
        sides = {max(max(p[0] for p in c) - min(p[0] for p in c) + 1, max(p[1] for p in c) - min(p[1] for p in c) + 1)
                 for i in range(4) for c in components(lit(ds.raw(i)))}
        assert max(sides) == g


def test_ocr_string_is_rendered_and_decodes_back():
    for length, scale in ((3, 1), (5, 2), (2, 3)):
        ds = only("ocr", n=6, ocr_length=length, ocr_scale=scale)
        for i in range(6):
            question, answer, _, _ = ds.text(i)
            mask = lit(ds.raw(i))
            ys, xs = np.nonzero(mask)
            assert ys.max() - ys.min() + 1 == 7 * scale  # the knobs set the drawn size
            assert xs.max() - xs.min() + 1 <= (6 * length - 1) * scale
            assert question == "what does the text say ?" and read_mask(mask, length, scale) == answer.replace(" ", "")


def test_the_font_is_unambiguous_and_decodable():
    masks = {c: char_mask(c).tobytes() for c in CHARSET}
    assert len(set(masks.values())) == len(CHARSET) == 31 and not set("ilo01") & set(CHARSET)
    for c in CHARSET:  # read_mask finds a string by its first lit row and column
        assert char_mask(c)[0].any() and char_mask(c)[:, 0].any(), c
    assert read_mask(text_mask("k7q", 2), 3, 2) == "k7q"
    for size in (5, 7, 12):
        assert len({shape_mask(k, size).tobytes() for k in SHAPES}) == len(SHAPES)


def test_spatial_answer_is_in_the_asked_cell_and_the_grid_knob_sets_the_cells():
    palette = {tuple(v): k for k, v in COLORS.items()}
    for grid in (2, 3, 4):
        ds = only("spatial", n=22, spatial_grid=grid)
        for i in range(22):
            question, answer, _, _ = ds.text(i)
            img = ds.raw(i)
            assert len(components(lit(img))) == grid * grid
            p = ds.question(i).params
            cell = 64 // grid
            block = img[p["row"] * cell : (p["row"] + 1) * cell, p["col"] * cell : (p["col"] + 1) * cell]
            pixels = block[lit(block)]
            if answer in COLORS:
                assert question.startswith("what color is the shape ") and palette[tuple(pixels[0])] == answer
            else:
                assert question.startswith("what shape is ") and answer in SHAPES
    assert only("spatial", n=1, spatial_grid=2).text(0)[0].endswith(("top left ?", "top right ?", "bottom left ?",
                                                                     "bottom right ?"))
    assert " in row " in only("spatial", n=1, spatial_grid=5).text(0)[0]


def test_compare_answer_is_the_fuller_half_and_clutter_sets_the_glyphs():
    for n in (3, 9):
        ds = only("compare", n=10, compare_glyphs=n)
        for i in range(10):
            comps = components(lit(ds.raw(i)))
            assert len(comps) == n
            left = sum(1 for c in comps if c[0][1] < 32)
            assert ds.text(i)[1] == ("left" if left > n - left else "right")


def test_vocabulary_covers_every_question_and_the_tokenizer_knows_every_word():
    for spec in (VQASpec(64), VQASpec(96, spatial_grid=2, ocr_length=6), VQASpec(128, spatial_grid=7)):
        ds = SyntheticVQA(spec, 80, "train", 0)
        used = {w for i in range(80) for part in ds.text(i)[:2] for w in words(part)}
        assert used <= set(ds.vocabulary()), used - set(ds.vocabulary())
    assert ds.vocabulary() == list(VOCABULARY)
    base = offline_tokenizer(1000)
    for vocab in (list(VOCABULARY), EasyVQA("val", size=10).vocabulary()):
        tok = offline_tokenizer(1000, extra_words=vocab)
        for w in vocab:
            ids = tok.encode(w, add_special_tokens=False)
            assert len(ids) == 1 and ids[0] != tok.unk_token_id and ids[0] < 1000, w
        assert all(tok.convert_tokens_to_ids(t) == i for t, i in base.get_vocab().items())  # built-in ids kept
    with pytest.raises(ConfigError, match=r"text.vocab_size=160 is smaller .* the data set.s words\); use text.vocab_size=169"):
        offline_tokenizer(160, extra_words=VOCABULARY)


@pytest.mark.parametrize(("knobs", "fragment"), [
    (dict(qtypes=("count", "nope")), "data.qtypes contains 'nope', not a question type of data.kind=vqa; valid: count, ocr"),
    (dict(qtypes=()), "data.qtypes=[] is empty"),
    (dict(count_max=10), "data.count_max=10 is out of range; valid: 1..9"),
    (dict(count_glyph_size=3), "data.count_glyph_size=3 is out of range; valid: >= 5"),
    (dict(spatial_grid=1), "data.spatial_grid=1 is out of range; valid: 2..9"),
    (dict(count_distractors=90), "cannot place 94 count glyphs (data.count_max + data.count_distractors) of 5px in a 64px"),
    (dict(compare_glyphs=40), "cannot place data.compare_glyphs=40 glyphs of 5px on one half of a 64px image (36 cells"),
    (dict(ocr_length=12), "cannot write data.ocr_length=12 characters at data.ocr_scale=1 (71x7px) in a 64px image"),
    (dict(image_size=32, spatial_grid=5), "data.spatial_grid=5 leaves 6px cells in a 32px image"),
])
def test_generator_refuses_what_it_cannot_draw(knobs, fragment):
    with pytest.raises(ConfigError) as err:
        VQASpec(**{"image_size": 64, **knobs}).check()
    assert fragment in str(err.value) and "\n" not in str(err.value)


# ------------------------------------------------------------------------------------------------ easy-VQA
def test_easy_vqa_loads_its_test_split_as_val_and_maps_the_types():
    val = EasyVQA("val")
    assert len(val) == 9673 and val.question_types == ("shape", "color", "yes_no")
    assert set(val.answer_set("shape")) == {"circle", "rectangle", "triangle"} and val.answer_set("yes_no") == ("yes", "no")
    assert len(val.answer_set("color")) == 8
    seen = Counter()
    for i in range(0, len(val), 97):
        question, answer, qtype, _ = val.text(i)
        assert answer in val.answer_set(qtype) and question.endswith(" ?") and question == question.lower()
        seen[qtype] += 1
    assert set(seen) == {"shape", "color", "yes_no"}
    assert 1 / 3 <= val.chance("shape") < 1 and 0.5 <= val.chance("yes_no") < 1  # the blind per-question prior
    sample = val[0]
    assert sample.image.size == (64, 64) and sample.qtype == "shape" and sample.id == "val/q0"
    sub = vqa_dataset(DataConfig(kind=DataKind.easy_vqa, qtypes=["color"], train_size=50, seed=1), "train")
    assert len(sub) == 50 and sub.question_types == ("color",) and {sub.text(i)[2] for i in range(50)} == {"color"}
    again = EasyVQA("train", ("color",), 50, 1)
    assert [sub.text(i) for i in range(50)] == [again.text(i) for i in range(50)]


def test_easy_vqa_without_the_package_is_one_config_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "easy_vqa", None)  # `import easy_vqa` now raises ImportError
    message = "data.kind=easy_vqa needs the easy-vqa package: pip install easy-vqa"
    with pytest.raises(ConfigError, match=f"^{message}$"):
        EasyVQA("train")
    with pytest.raises(ConfigError, match=f"^{message}$"):
        to_config(compose_config("smolvlm_debug", ["data=easy_vqa"]))


# ------------------------------------------------------------------------------------------- conversations
def _row(rid: str, image: str | None, *turns: tuple[str, str], **extra) -> str:
    row = {"id": rid, **({"image": image} if image is not None else {}),
           "conversations": [{"from": f, "value": v} for f, v in turns], **extra}
    return json.dumps(row)


def write_conversations(root: Path, lines: list[str], name: str = "train.jsonl") -> Path:
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 12), "red").save(root / "imgs" / "a.png")
    Image.new("L", (8, 8), 128).save(root / "imgs" / "b.png")
    (root / "imgs" / "x.png").write_bytes(b"\x89PNG not really")
    (root / name).write_text("\n".join(lines) + "\n")
    return root / name


GOOD = [
    _row("r1", "imgs/a.png", ("human", "<image>\nWhat color is it?"), ("gpt", "Red."),
         ("human", "And its shape?"), ("gpt", "a square")),
    _row("r2", "imgs/b.png", ("human", "How bright?<image>"), ("gpt", "half"), qtype="brightness"),
]
BAD = [
    _row("b1", None, ("human", "what?"), ("gpt", "no image")),  # line 3
    _row("b2", "imgs/x.png", ("human", "what?"), ("gpt", "broken file")),  # line 4
    _row("b3", "imgs/gone.png", ("human", "what?"), ("gpt", "missing file")),  # line 5
    _row("b4", "imgs/a.png", ("gpt", "an answer without a question")),  # line 6
    _row("b5", "imgs/a.png", ("human", "a question without an answer")),  # line 7
    _row("b6", "imgs/a.png", ("human", "<image>"), ("gpt", "only the placeholder")),  # line 8
    "{not json",  # line 9
    json.dumps(["a", "list"]),  # line 10
    _row("b7", "", ("human", "what?"), ("gpt", "empty image")),  # line 11
]


def test_conversations_keep_the_good_rows_and_count_every_bad_one(tmp_path, capsys):
    path = write_conversations(tmp_path, GOOD + BAD)
    ds = Conversations(path, tmp_path, "train")
    assert len(ds) == 3 and ds.question_types == ("conversation", "brightness")
    assert [ds.text(i) for i in range(3)] == [("What color is it?", "Red.", "conversation", "r1/0"),
                                              ("And its shape?", "a square", "conversation", "r1/1"),
                                              ("How bright?", "half", "brightness", "r2/0")]
    assert ds[0].image.size == (20, 12) and ds[2].image.mode == "L"  # opened lazily, in its own mode
    assert ds.skipped == 9 and ds.skip_reasons == {
        "not a JSON object": 2, "without an image": 2, "image file that is missing": 1, "image that does not open": 1,
        "without a human turn": 1, "human turn without a question": 1, "without an answer": 1}
    err = capsys.readouterr().err
    assert err == (
        "vtlab: warning: train.jsonl: skipped 9 of 11 rows (2 not a JSON object (lines 9, 10), 2 without an image "
        "(lines 3, 11), 1 image file that is missing (line 5: imgs/gone.png), 1 image that does not open (line 4: "
        "imgs/x.png), 1 without a human turn (line 6), 1 human turn without a question (line 8), 1 without an answer "
        "(line 7))\n")
    assert set(ds.vocabulary()) == {"what", "color", "is", "it", "?", "red", ".", "and", "its", "shape", "a", "square",
                                    "how", "bright", "half"}
    assert ds.chance("brightness") == 1.0 and ds.answer_set("brightness") == ("half",)


def test_conversations_through_the_config(tmp_path, capsys):
    write_conversations(tmp_path, GOOD)
    write_conversations(tmp_path, GOOD[1:], "held_out.jsonl")
    data = DataConfig(kind=DataKind.conversations, root=str(tmp_path), val_jsonl="held_out.jsonl", train_size=None,
                      val_size=None)
    assert len(vqa_dataset(data, "train")) == 3 and len(vqa_dataset(data, "val")) == 1
    data.qtypes = ["brightness"]
    assert [s.answer for s in vqa_dataset(data, "train")] == ["half"]
    data.qtypes = ["nope"]
    with pytest.raises(ConfigError, match=r"data.qtypes=\['nope'\]: train.jsonl has no question type \['nope'\]"):
        vqa_dataset(data, "train")
    assert capsys.readouterr().err == ""  # nothing skipped, nothing said


def test_conversations_with_no_usable_row_is_one_data_error(tmp_path):
    path = write_conversations(tmp_path, BAD[:3])
    with pytest.raises(DataError) as err:
        Conversations(path, tmp_path)
    assert str(err.value) == (
        f"{path}: no usable row: all 3 rows were skipped (1 without an image (line 1), 1 image file that is missing "
        f"(line 3: imgs/gone.png), 1 image that does not open (line 2: imgs/x.png)); each line needs an image that opens "
        f"and a human turn followed by a gpt answer")
    empty = write_conversations(tmp_path, [], "val.jsonl")
    with pytest.raises(DataError, match="no usable row: it holds no rows"):
        Conversations(empty, tmp_path)


def test_conversations_root_and_files_are_config_errors(tmp_path):
    data = DataConfig(kind=DataKind.conversations, root=str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match=r"^data.root=.*nope does not exist; expected .*nope/train.jsonl and"):
        vqa_dataset(data, "train")
    data.root = str(tmp_path)
    (tmp_path / "other.jsonl").touch()
    with pytest.raises(ConfigError, match=r"has no val.jsonl for the test split \(data.val_jsonl=val.jsonl; .jsonl files "
                                          r"there: \['other.jsonl'\]\)"):
        vqa_dataset(data, "test")


def test_answers_longer_than_the_context_are_skipped_and_counted(tmp_path, capsys):
    write_conversations(tmp_path, GOOD)
    ds = Conversations(tmp_path / "train.jsonl", tmp_path)
    tok = offline_tokenizer(1000, extra_words=ds.vocabulary())
    assert check_answer_lengths(ds, tok, context=100) is ds
    fit = check_answer_lengths(ds, tok, context=11, prompt_tokens=5)  # "what color is it ?" + "red ." is 7 + 5
    assert len(fit) == 2 and fit.skipped == 1 and fit.skip_reasons == {"longer than the LM's context of 11 tokens": 1}
    assert [fit.text(i)[3] for i in range(2)] == ["r1/1", "r2/0"] and fit[1].answer == "half"
    assert capsys.readouterr().err == ("vtlab: warning: train.jsonl: skipped 1 of 3 samples (1 longer than the LM's "
                                       "context of 11 tokens (r1/0: 12 tokens))\n")
    with pytest.raises(DataError, match=r"^train.jsonl: none of the 3 samples fits the LM's context of 3 tokens"):
        check_answer_lengths(ds, tok, context=3)


# ------------------------------------------------------------------------------------------- config + CLI
BAD_INPUTS = {
    "qtypes-unknown": (["data=vqa", "data.qtypes=[nope]"],
                       "data.qtypes contains 'nope', not a question type of data.kind=vqa; valid: count, ocr, spatial, compare"),
    "qtypes-on-synthetic": (["data.qtypes=[count]"], "data.qtypes=['count'] is for the sets with text answers"),
    "qtypes-twice": (["data=vqa", "data.qtypes=[ocr,ocr]"], "data.qtypes=['ocr', 'ocr'] names a type twice"),
    "ocr-too-long": (["task=align", "data=vqa", "data.ocr_length=12"],
                     "data.kind=vqa cannot write data.ocr_length=12 characters at data.ocr_scale=1 (71x7px) in a 64px"),
    "count-max": (["data=vqa", "data.count_max=12"], "data.count_max=12 is out of range; valid: 1..9"),
    "vqa-size-null": (["data=vqa", "data.train_size=null"], "data.train_size=null: data.kind=vqa generates"),
    "vqa-hw-size": (["task=align", "data=vqa", "data.image_size=[64,32]"], "renders square synthetic images; give one int"),
    "easy-vqa-qtype": (["data=easy_vqa", "data.qtypes=[count]"], "data.qtypes contains 'count', not a question type of "
                                                                  "data.kind=easy_vqa; valid: shape, color, yes_no"),
    "conversations-no-root": (["data=conversations"], "data=conversations needs data.root=PATH: a folder with "
                                                      "PATH/train.jsonl and PATH/val.jsonl"),
    "conversations-missing-root": (["task=align", "data=conversations", "data.root=/nonexistent/vqa"],
                                   "data.root=/nonexistent/vqa does not exist; expected /nonexistent/vqa/train.jsonl"),
}


def preflight(args: list[str]) -> str | None:
    """What `python -m vtlab ARGS` says before Hydra starts (vtlab.cli.main's own checks, in its order)."""
    from vtlab import cli

    return cli.check_group_choices(args) or cli.check_composition(args) or cli.check_config(args)


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_values_are_refused_before_anything_runs(case):
    args, fragment = BAD_INPUTS[case]
    message = preflight(["+model=smolvlm_debug", *args])
    assert message is not None and fragment in message and "\n" not in message, message


def test_good_vqa_configs_validate(tmp_path):
    for args in (["data=vqa"], ["task=align", "data=vqa", "data.qtypes=[count,spatial]", "data.spatial_grid=4"],
                 ["task=eval", "data=easy_vqa"], ["data=vqa", "data.ocr_length=12"]):  # profile draws nothing
        assert preflight(["+model=smolvlm_debug", *args]) is None, args
    (tmp_path / "val.jsonl").touch()
    assert preflight(["+model=smolvlm_debug", "task=eval", "data=conversations", f"data.root={tmp_path}"]) is None
    message = preflight(["+model=smolvlm_debug", "task=align", "data=conversations", f"data.root={tmp_path}"])
    assert "has no train.jsonl for the train split" in message


def run_cli(args: list[str], pythonpath: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env |= {"WANDB_MODE": "disabled", "PYTHONPATH": os.pathsep.join([*pythonpath, str(REPO)]), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "vtlab", "+model=smolvlm_debug", "logger=none", *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)


CLI_CASES = ["qtypes-unknown", "ocr-too-long", "conversations-missing-root", "easy-vqa-missing"]


@pytest.fixture(scope="module")
def cli_runs(request, tmp_path_factory):
    """The selected subprocess cases, two at a time."""
    wanted = [item.callspec.params["case"] for item in request.session.items
              if item.originalname == "test_bad_input_is_one_line_on_stderr" and item.module is request.module]
    shadow = tmp_path_factory.mktemp("shadow")  # an easy_vqa that cannot be imported, ahead on the path
    (shadow / "easy_vqa").mkdir()
    (shadow / "easy_vqa" / "__init__.py").write_text("raise ImportError(\"No module named 'easy_vqa'\")\n")

    def run(case: str) -> tuple[str, subprocess.CompletedProcess]:
        if case == "easy-vqa-missing":
            return case, run_cli(["data=easy_vqa"], (str(shadow),))
        return case, run_cli(BAD_INPUTS[case][0])

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(run, wanted))


@pytest.mark.slow  # ~10-30 s each (a fresh interpreter imports torch and Lightning); the messages are checked above
@pytest.mark.parametrize("case", CLI_CASES)
def test_bad_input_is_one_line_on_stderr(case, cli_runs):
    proc = cli_runs[case]
    fragment = ("data.kind=easy_vqa needs the easy-vqa package: pip install easy-vqa" if case == "easy-vqa-missing"
                else BAD_INPUTS[case][1])
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith("vtlab: error: ") and proc.stderr.count("\n") == 1, proc.stderr[-2000:]
    assert fragment in proc.stderr and "Traceback" not in proc.stderr + proc.stdout
