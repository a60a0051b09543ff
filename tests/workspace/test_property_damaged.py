"""Property-based tests (Hypothesis): no damaged run file ends in a traceback (issue 20).

Hypothesis damages one file of a small trained workspace at a time: any JSON value at any key
(at any depth) of config.json, metrics.json, history.json, noise_table.json, embedding.json
or search/results.json, a whole file replaced by any JSON value, a file cut short or replaced
by random bytes, and tensors of wrong shapes, kinds of number or NaN values (or plain values
where tensors belong) anywhere in model.pt and state.pt. Then a command that reads what was
damaged runs on it (`corrupt`, `embed`, `report`, `fit --resume`, `fit --from-search`,
`study`), and for every example:

- it ends with exit 0, 1 or 2 and no traceback (an exception that escapes the command is a
  failure: only typer's exits are allowed), with an error sentence when it fails;
- nothing outside the workspace changed (its sibling folder, the current folder, the data).

The runs are trained once per session (conftest's `trained_runs`, 1 epoch on its fake data) and
copied for each example. Profiles: `ci` (fixed examples, derandomized; chosen when CI=true) keeps
the module within about a minute and a half on two cores; `dev` draws more, at random; the
environment variable HYPOTHESIS_PROFILE picks either.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import copy_runs
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from aetool import workspace as runs
from aetool.cli import app

# CI: fixed examples, and no shrinking (a failure prints its blob to reproduce it locally).
settings.register_profile("ci", max_examples=50, deadline=None, derandomize=True,
                          phases=[Phase.explicit, Phase.reuse, Phase.generate],
                          suppress_health_check=[HealthCheck.too_slow,
                                                 HealthCheck.data_too_large],
                          print_blob=True)
settings.register_profile("dev", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow,
                                                 HealthCheck.data_too_large],
                          print_blob=True)
PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE")
                               or ("ci" if os.environ.get("CI") == "true" else "dev"))


def profile(share: float) -> settings:
    """The chosen profile with `share` times its examples (the JSON files have more to damage
    than the checkpoints, and their examples run longer)."""
    return settings(PROFILE, max_examples=max(1, round(PROFILE.max_examples * share)))

runner = CliRunner()

# The JSON files each command reads (the run `ed3` is finished, `half` is not; both get the
# damage), and the commands that read each checkpoint.
JSON_READ_BY = {
    "corrupt": [runs.CONFIG, runs.METRICS],
    "corrupt-run": [runs.CONFIG, runs.METRICS],
    "embed": [runs.CONFIG, runs.METRICS],
    "report": [runs.CONFIG, runs.METRICS, runs.HISTORY, runs.NOISE_TABLE, runs.EMBEDDING_JSON,
               "search/results.json"],
    "resume": [runs.CONFIG],
    "from-search": ["search/results.json"],
    "study": [runs.CONFIG, runs.METRICS, runs.HISTORY, runs.NOISE_TABLE, runs.EMBEDDING_JSON],
}
TORCH_READERS = {runs.MODEL: ["corrupt", "corrupt-run", "embed", "resume"],
                 runs.STATE: ["resume"]}

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=3),
    max_leaves=8,
)
DTYPES = [torch.float32, torch.float64, torch.float16, torch.int64, torch.uint8, torch.bool,
          torch.complex64]


@st.composite
def tensors(draw) -> torch.Tensor:
    """A tensor of any small shape and kind of number, possibly NaN or infinite."""
    shape = draw(st.lists(st.integers(0, 4), max_size=4))
    dtype = draw(st.sampled_from(DTYPES))
    fill = draw(st.sampled_from([0.0, 1.0, -3.0, 1e30, math.nan, math.inf]))
    if not dtype.is_floating_point and not dtype.is_complex:
        fill = 1.0 if not math.isfinite(fill) else fill
    value = torch.full(shape, fill).to(dtype) if dtype != torch.bool else torch.ones(shape) > 0
    return value


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def trained(tmp_path_factory, trained_runs, fake_data) -> Path:
    """Built once: a workspace with a finished run `ed3` (1 epoch, with its noise table and
    embedding), an unfinished run `half` (stopped after its first epoch), both copied from
    conftest's, and search results for ED 3."""
    from aetool.evaluate.corrupt import corrupt_and_save
    from aetool.evaluate.embed import embed_run
    from aetool.noises import parse_noise_specs

    root = copy_runs(trained_runs, tmp_path_factory.mktemp("property") / "runs", "ed3", "half")
    run = runs.open_run(root / "ed3")
    corrupt_and_save(run.model(), fake_data.test_images, parse_noise_specs(["original"]),
                     run.path, run.name, run.ed, examples=1)
    embed_run(run, fake_data)
    setting = {"lr": 0.01, "weight_decay": 1e-5, "val_mean": 0.05, "val_std": 0.001,
               "train_mean": 0.049, "gap": 0.001, "oscillation": 0.0, "kept": True,
               "reason": None, "fold_val": [0.05], "fold_train": [0.049]}
    runs.save_json(root / "search" / "results.json", {
        "grid": {"ed": [3], "lr": [0.01], "weight_decay": [1e-5], "model": run.config["model"]},
        "eds": {"3": {"settings": [setting], "best": {k: setting[k] for k in (
            "lr", "weight_decay", "val_mean", "val_std")}}},
        "complete": True, "missing": []})
    return root


@pytest.fixture(scope="module", autouse=True)
def offline():
    """No download is ever attempted (a damaged config.json may name a registered data set
    that is not in the fake data folder)."""
    from aetool import data

    def refuse(url, *args, **kwargs):
        raise OSError("downloads are off in these tests")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(data, "_download", refuse)
        yield


# --------------------------------------------------------------------------- damage


def _location(data, obj: Any) -> tuple[Any, Any] | None:
    """A (container, key) somewhere in the nested dicts and lists of `obj`, drawn at random;
    None when `obj` holds nothing to change."""
    found = None
    for _ in range(4):
        keys = list(obj) if isinstance(obj, dict) else list(range(len(obj))) \
            if isinstance(obj, list) else []
        if not keys:
            break
        key = data.draw(st.sampled_from(keys), label="key")
        found = (obj, key)
        child = obj[key]
        if not isinstance(child, (dict, list)) or not data.draw(st.booleans(), label="deeper"):
            break
        obj = child
    return found


def damage_json(data, text: str) -> bytes:
    """The text of a JSON file with one thing changed: a value anywhere, a key removed or
    added, the whole content, a cut, or random bytes."""
    how = data.draw(st.sampled_from(["value", "value", "value", "remove", "add", "whole",
                                     "cut", "bytes"]), label="how")
    if how == "cut":
        return text.encode()[: data.draw(st.integers(0, max(len(text) - 1, 0)), label="at")]
    if how == "bytes":
        return data.draw(st.binary(max_size=64), label="bytes")
    obj = json.loads(text)
    if how == "whole":
        return json.dumps(data.draw(JSON, label="content")).encode()
    place = _location(data, obj)
    if how == "add" or place is None:
        target = place[0] if place is not None and isinstance(place[0], dict) else obj
        if isinstance(target, dict):
            target[data.draw(st.text(max_size=8), label="new key")] = data.draw(JSON)
        return json.dumps(obj).encode()
    container, key = place
    if how == "remove":
        del container[key]
    else:
        container[key] = data.draw(JSON, label="value")
    return json.dumps(obj).encode()


def damage_torch(data, path: Path) -> bytes | None:
    """model.pt or state.pt with one thing changed (None: saved in place with torch.save)."""
    how = data.draw(st.sampled_from(["tensor", "tensor", "value", "remove", "cut", "bytes"]),
                    label="how")
    raw = path.read_bytes()
    if how == "cut":
        return raw[: data.draw(st.integers(0, len(raw) - 1), label="at")]
    if how == "bytes":
        return data.draw(st.binary(max_size=64), label="bytes")
    obj = torch.load(path, weights_only=True)
    place = _location(data, obj)
    if place is not None:
        container, key = place
        if how == "remove":
            del container[key]
        else:
            container[key] = data.draw(tensors() if how == "tensor" else JSON, label="value")
    torch.save(obj, path)
    return None


def apply_damage(data, workspace: Path, file: str) -> None:
    """The same damage to `file` in every run holding it (or to the search results)."""
    paths = [workspace / file] if file.startswith("search") else \
        [p for p in (workspace / "ed3" / file, workspace / "half" / file) if p.is_file()]
    first = paths[0]
    if file.endswith(".pt"):
        damaged = damage_torch(data, first)
        content = first.read_bytes() if damaged is None else damaged
    else:
        content = damage_json(data, first.read_text())
    for path in paths:
        path.write_bytes(content)


# --------------------------------------------------------------------------- running


def command_line(command: str, workspace: Path, data_dir: Path) -> list[str]:
    common = ["--runs", str(workspace), "--device", "cpu", "--data-dir", str(data_dir)]
    return {
        "corrupt": ["corrupt", *common, "--noise", "original", "--examples", "0"],
        "corrupt-run": ["corrupt", "--run", "ed3", *common, "--noise", "original",
                        "--examples", "0"],
        "embed": ["embed", *common],
        "report": ["report", "--runs", str(workspace)],
        "resume": ["fit", "--name", "half", "--resume", "--max-epochs", "2", *common],
        "from-search": ["fit", "--name", "new", "--ed", "3", "--from-search", "--preset",
                        "report", "--max-epochs", "1", "--batch-size", "100", "--val-size",
                        "100", *common],
        "study": ["study", "--ed", "3", "--skip-search", "--preset", "report", "--max-epochs",
                  "1", "--noise", "original", "--val-size", "100", *common],
    }[command]


def snapshot(folder: Path, skip: Path | None = None) -> dict[str, bytes]:
    """Every file under `folder` (but not under `skip`) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and (skip is None or skip not in p.parents)}


@contextmanager
def sandbox(trained: Path) -> Iterator[tuple[Path, Path]]:
    """A fresh copy of the trained workspace as parent/ws, beside parent/sibling/keep.txt and
    parent/cwd (the current folder while the command runs)."""
    with tempfile.TemporaryDirectory() as tmp:
        parent = Path(tmp) / "parent"
        (parent / "sibling").mkdir(parents=True)
        (parent / "sibling" / "keep.txt").write_text("precious")
        (parent / "cwd").mkdir()
        workspace = parent / "ws"
        shutil.copytree(trained, workspace)
        here = os.getcwd()
        os.chdir(parent / "cwd")
        try:
            yield parent, workspace
        finally:
            os.chdir(here)


def check_command(command: str, parent: Path, workspace: Path, data_dir: Path) -> None:
    """Run one command and check the properties every command keeps on damaged files."""
    outside, data_before = snapshot(parent, skip=workspace), snapshot(data_dir)
    result = runner.invoke(app, command_line(command, workspace, data_dir))
    output = result.output
    event(f"{command}: exit {result.exit_code}")
    assert result.exit_code in (0, 1, 2), output
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        f"{type(result.exception).__name__}: {result.exception}\n{output}"
    assert "Traceback" not in output, output
    if result.exit_code != 0:
        assert "Error" in output, output  # one sentence (or typer's usage panel) says why
    assert snapshot(parent, skip=workspace) == outside
    assert snapshot(data_dir) == data_before


# --------------------------------------------------------------------------- properties


@profile(1.6)
@given(data=st.data(), command=st.sampled_from(sorted(JSON_READ_BY)))
def test_a_damaged_json_file_never_ends_in_a_traceback(trained, fake_data_dir, data, command):
    file = data.draw(st.sampled_from(JSON_READ_BY[command]), label="file")
    with sandbox(trained) as (parent, workspace):
        apply_damage(data, workspace, file)
        check_command(command, parent, workspace, fake_data_dir)


@profile(0.6)
@given(data=st.data(), file=st.sampled_from(sorted(TORCH_READERS)))
def test_a_damaged_checkpoint_never_ends_in_a_traceback(trained, fake_data_dir, data, file):
    command = data.draw(st.sampled_from(TORCH_READERS[file]), label="command")
    with sandbox(trained) as (parent, workspace):
        apply_damage(data, workspace, file)
        check_command(command, parent, workspace, fake_data_dir)
