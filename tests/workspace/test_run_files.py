"""Bad run files: a config.json of the wrong types, on `corrupt`, `embed` and `fit --resume`,
a state.pt of another shape, and a checkpoint holding a pickled object, each one sentence naming
the file (exit 1), nothing changed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import Said, snapshot
from typer.testing import CliRunner

from aetool import workspace as runs
from aetool.cli import app
from aetool.errors import RunError
from aetool.train.loop import fit, preset_config

runner = CliRunner()


def invoke(*args) -> Said:
    return Said(runner.invoke(app, [str(a) for a in args]))


def _edit_json(path: Path, value) -> None:
    path.write_text(json.dumps(value))


@pytest.mark.parametrize("command", ["corrupt", "embed"])
def test_config_with_wrong_types_is_one_sentence(command, finished, fake_data_dir):
    _, workspace = finished
    _edit_json(workspace / "ed4" / runs.CONFIG, {"ed": "four", "batch_size": -5})
    result = invoke(command, "--device", "cpu", "--data-dir", fake_data_dir)
    assert result.exit_code == 1, result.output
    assert "config.json" in result.output and "ed must be a whole number" in result.output
    assert "Traceback" not in result.output


def test_resume_with_a_bad_config_is_one_sentence(sandbox, fake_data_dir):
    _, workspace = sandbox
    (workspace / "half").mkdir(parents=True)
    _edit_json(workspace / "half" / runs.CONFIG, {"ed": "four", "batch_size": -5})
    result = invoke("fit", "--name", "half", "--resume", "--device", "cpu")
    assert result.exit_code == 1, result.output
    assert "config.json" in result.output and "ed must be a whole number" in result.output
    assert "fit ED=" not in result.output


def test_resume_from_a_state_of_another_shape(sandbox, fake_data_dir, fake_split):
    _, workspace = sandbox
    config = preset_config(ed=4, max_epochs=3, batch_size=100, device="cpu", val_size=100)

    def stop(record, cfg):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(config, workspace / "r", split=fake_split, on_epoch=stop)
    state = torch.load(workspace / "r" / runs.STATE, weights_only=True)
    state["model"]["encoder_lin.2.weight"] = torch.zeros(7, 64)
    torch.save(state, workspace / "r" / runs.STATE)
    before = snapshot(workspace)
    result = invoke("fit", "--name", "r", "--resume", "--data-dir", fake_data_dir)
    assert result.exit_code == 1, result.output
    assert "state.pt does not match" in result.output and "Traceback" not in result.output
    assert snapshot(workspace) == before


def test_a_pickled_object_is_refused_without_pointing_at_the_unsafe_path(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": Anything()}, path)
    result = invoke("corrupt", "--checkpoint", path)
    assert result.exit_code == 1
    assert "not a plain tensor checkpoint" in result.output
    assert "will not unpickle" in result.output
    assert "weights_only" not in result.output and "Re-running" not in result.output
    with pytest.raises(RunError, match="not a plain tensor checkpoint"):
        runs.load_torch(path)


class Anything:
    """Any Python object: pickled into a checkpoint, it must never be unpickled."""
