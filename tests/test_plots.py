"""Sweep plots: one series per (model, connector, image size), distinct titles, units, device/dtype/mode subtitle."""

from __future__ import annotations

from vtlab.results.plots import PLOTS, _series, subtitle


def _row(image: str, factor: int, tokens: int, latency: float) -> dict:
    return {"status": "ok", "model": "smolvlm_debug", "connector": "pixel_unshuffle", "image": image, "frames": 17,
            "factor": factor, "tokens": tokens, "latency_ms": latency, "device_name": "AMD EPYC", "dtype": "float32",
            "latency_mode": "eager"}


def test_image_size_sweep_draws_one_series_per_size():
    rows = [_row("64x64", 1, 1088, 30.0), _row("64x64", 4, 68, 3.0), _row("128x128", 1, 1088, 31.0),
            _row("128x128", 4, 68, 3.2), {"status": "skipped", "model": "smolvlm_debug", "factor": 3}]
    series = _series(rows, "latency_ms")
    assert sorted(series) == [("smolvlm_debug", "pixel_unshuffle", "128x128 (17 frames)"),
                              ("smolvlm_debug", "pixel_unshuffle", "64x64 (17 frames)")]
    assert [f for _, _, f in series[("smolvlm_debug", "pixel_unshuffle", "64x64 (17 frames)")]] == [4, 1]  # by tokens
    assert subtitle(rows, "latency_mode") == "device AMD EPYC; dtype float32; mode eager"
    assert subtitle(rows, None) == "device AMD EPYC; dtype float32"


def test_every_plot_has_its_own_title_and_a_unit():
    labels = [label for _, label, _, _ in PLOTS]
    assert len(set(labels)) == len(labels) and len({name for _, _, name, _ in PLOTS}) == len(PLOTS)
    assert all(label.endswith(")") and "(" in label for label in labels)  # "quantity (unit)"
