"""`task.ckpt_path` is read with torch.load(weights_only=True), as `model.weights` is: a pickle that would
run code is refused instead of executed."""

from __future__ import annotations

import os
import pickle

import pytest

from vtlab.errors import ConfigError
from vtlab.train.checkpoint import load_checkpoint


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch SHOULD_NOT_EXIST",))


def test_ckpt_path_pickle_that_runs_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"state_dict": {}, "vtlab_arch": {}, "x": _RunsCode()}))
    with pytest.raises(ConfigError, match="cannot be read"):
        load_checkpoint(str(path))
    assert not (tmp_path / "SHOULD_NOT_EXIST").exists()
