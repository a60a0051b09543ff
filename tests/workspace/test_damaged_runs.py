"""Damaged run files and runs whose model or data set is not available (issues 20 and 21).

Every command that reads a run ends with one sentence naming the damaged file (exit 1), never
a traceback. A command over the whole workspace (`corrupt`, `embed`, `report`, `study`) skips
a run it cannot load with a warning, finishes every other run and exits 1 at the end; the
report lists the damaged run with its reason and renders the rest. A test MSE that is not a
number (a model that diverged) is a result: written, read back and shown as "–".
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from aetool import workspace as runs
from aetool.cli import app

runner = CliRunner()


class Said:
    """A command's result, its output with Rich's panel borders and line wrapping undone."""

    def __init__(self, result) -> None:
        self.exit_code = result.exit_code
        self.exception = result.exception
        text = "".join(" " if c in "│╭╮╰╯─" else c for c in result.output)
        self.output = " ".join(text.split())

    def one_sentence(self, code: int = 1) -> Said:
        """Assert the exit code and that no traceback escaped (only typer's exits)."""
        assert self.exit_code == code, self.output
        assert "Traceback" not in self.output
        assert self.exception is None or isinstance(self.exception, SystemExit), self.output
        return self


def invoke(*args) -> Said:
    return Said(runner.invoke(app, [str(a) for a in args]))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def trained(trained_runs):
    """A finished run `ed3` (1 epoch) and an unfinished one `half` (stopped after its first of
    2 epochs), on the fake data: conftest's, shared, so only ever copied."""
    return trained_runs


@pytest.fixture()
def workspace(trained, tmp_path, monkeypatch):
    """parent/ws (as $AETOOL_RUNS) holding copies of the finished run as `ed3` and `good`,
    beside parent/sibling/keep.txt, which must survive."""
    parent = tmp_path / "parent"
    (parent / "sibling").mkdir(parents=True)
    (parent / "sibling" / "keep.txt").write_text("precious")
    root = parent / "ws"
    shutil.copytree(trained / "ed3", root / "ed3")
    shutil.copytree(trained / "ed3", root / "good")
    monkeypatch.setenv("AETOOL_RUNS", str(root))
    monkeypatch.chdir(tmp_path)
    return root


def data_args(fake_data_dir) -> list[str]:
    return ["--device", "cpu", "--data-dir", str(fake_data_dir)]


def args_for(command: str, fake_data_dir) -> list[str]:
    """The options that keep `corrupt` and `embed` small on the fake data."""
    extra = ["--noise", "original", "--examples", "0"] if command == "corrupt" else []
    return [*data_args(fake_data_dir), *extra]


def edit_json(path: Path, key: str | None, value) -> None:
    """Set `key` of the JSON object in `path` (or the whole file when key is None)."""
    data = json.loads(path.read_text()) if key is not None else None
    if key is not None:
        data[key] = value
    path.write_text(json.dumps(data if key is not None else value))


def damage_weights(path: Path, how: str) -> None:
    state = torch.load(path, weights_only=True)
    if how == "shape":
        state["encoder_lin.2.weight"] = torch.zeros(7, 64)
    elif how == "nan":
        state = {k: torch.full_like(v, math.nan) for k, v in state.items()}
    else:  # whole numbers where floats belong
        state = {k: v.to(torch.int64) for k, v in state.items()}
    torch.save(state, path)


# --------------------------------------------------------------------------- 1. damaged files


@pytest.mark.parametrize("command", ["corrupt", "embed"])
def test_metrics_with_a_wrong_type_is_one_sentence(command, workspace, fake_data_dir):
    edit_json(workspace / "ed3" / runs.METRICS, "dataset_sha256", 5)
    result = invoke(command, "--run", "ed3", *args_for(command, fake_data_dir)).one_sentence()
    assert "metrics.json: 'dataset_sha256' must be a string" in result.output


@pytest.mark.parametrize("how", ["shape", "nan", "dtype"])
@pytest.mark.parametrize("command", ["corrupt", "embed"])
def test_damaged_weights_are_one_sentence_naming_model_pt(command, how, workspace,
                                                          fake_data_dir):
    damage_weights(workspace / "ed3" / runs.MODEL, how)
    before = snapshot(workspace.parent)
    result = invoke(command, "--run", "ed3", *data_args(fake_data_dir)).one_sentence()
    assert f"{workspace / 'ed3' / 'model.pt'}" in result.output
    assert {"shape": "has shape (7, 64), not (3, 64)", "nan": "not finite numbers",
            "dtype": "int64 values, not floats"}[how] in result.output
    assert snapshot(workspace.parent) == before


def test_the_whole_workspace_skips_a_damaged_run_and_does_the_rest(workspace, fake_data_dir):
    edit_json(workspace / "ed3" / runs.METRICS, "dataset_sha256", 5)
    corrupt = invoke("corrupt", *args_for("corrupt", fake_data_dir)).one_sentence()
    assert "Run ed3 is skipped" in corrupt.output and "metrics.json" in corrupt.output
    assert "Run ed3 could not be loaded and was skipped" in corrupt.output
    assert (workspace / "good" / runs.NOISE_TABLE).is_file()
    assert not (workspace / "ed3" / runs.NOISE_TABLE).exists()
    embed = invoke("embed", *data_args(fake_data_dir)).one_sentence()
    assert "Run ed3 is skipped" in embed.output
    assert (workspace / "good" / runs.EMBEDDING_JSON).is_file()


@pytest.mark.parametrize("file, value, reason", [
    (runs.HISTORY, [{"epoch": {}}], "history.json: epoch 1 'epoch' must be a whole number"),
    (runs.NOISE_TABLE, [], "noise_table.json must hold a JSON object, got a list"),
    (runs.NOISE_TABLE, {"rows": [{"label": "x", "mse": "low"}]}, "'rows', row 1 'mse'"),
    (runs.EMBEDDING_JSON, {"plots": [1]}, "embedding.json: 'plots' must be a JSON object"),
    (runs.EMBEDDING_JSON, {"classes": 5}, "embedding.json: 'classes' must be a JSON list"),
    (runs.METRICS, {"test_mse": 0.1, "dataset_sha256": 5}, "'dataset_sha256' must be"),
])
def test_report_lists_a_damaged_run_and_renders_the_rest(file, value, reason, workspace):
    edit_json(workspace / "ed3" / file, None, value)
    result = invoke("report").one_sentence()
    assert "Run ed3 is left out of the report" in result.output and reason in result.output
    html = (workspace / "report.html").read_text()
    assert ">good<" in html and "Runs that could not be read" in html
    assert reason.split("'")[0].strip() in html  # the reason is on the page too


BEST = {"lr": 0.01, "weight_decay": 0.0, "val_mean": 0.05, "val_std": 0.0}


@pytest.mark.parametrize("results, needle", [
    ({"eds": {"3": {"settings": [], "best": {**BEST, "lr": "fast"}}}},
     "results.json: ED 3 best setting 'lr' must be a finite number"),
    ({"eds": {"3": {"settings": [{**BEST, "kept": True}], "best": BEST}},
      "grid": {"lr": [[]]}}, "results.json: 'grid' 'lr' 1 must be a finite number"),
    ({"eds": []}, "results.json: 'eds' must be a JSON object"),
], ids=["best lr", "grid list", "eds list"])
def test_odd_search_results_are_named_by_report_and_fit_from_search(results, needle, workspace,
                                                                    fake_data_dir):
    (workspace / "search").mkdir()
    edit_json(workspace / "search" / "results.json", None, results)
    report = invoke("report").one_sentence()
    assert "The search results are left out of the report" in report.output
    assert needle in report.output
    assert ">good<" in (workspace / "report.html").read_text()
    result = invoke("fit", "--ed", "3", "--name", "new", "--from-search", "--max-epochs", "1",
                    *data_args(fake_data_dir)).one_sentence()
    assert needle in result.output
    assert not (workspace / "new").exists()


def test_a_config_with_a_null_switch_is_one_sentence(workspace, fake_data_dir):
    """Found by test_property_damaged.py: `"resize": null` ended in a KeyError."""
    edit_json(workspace / "ed3" / runs.CONFIG, "resize", None)
    result = invoke("corrupt", "--run", "ed3", *args_for("corrupt", fake_data_dir))
    assert "config.json: resize must be true or false, got None" in result.one_sentence().output


def _state(run: Path, change) -> None:
    state = torch.load(run / runs.STATE, weights_only=True)
    change(state)
    torch.save(state, run / runs.STATE)


@pytest.mark.parametrize("change, needle", [
    (lambda s: s.update(best_val="x"), "state.pt: 'best_val' must be a number"),
    (lambda s: s.update(best_epoch=-1), "state.pt: 'best_epoch' must be a whole number"),
    (lambda s: s.update(history=[{"epoch": {}}]), "state.pt: 'history', epoch 1"),
    (lambda s: s.update(dataset_sha256=5), "'dataset_sha256' must be a string"),
    (lambda s: s["optimizer"]["param_groups"][0].update(betas="ab"), "optimiser's 'betas'"),
    (lambda s: s["optimizer"]["state"][0].update(exp_avg=torch.zeros(2)), "'exp_avg' state"),
    (lambda s: s["model"].update({"encoder_lin.2.weight": torch.full((3, 64), math.nan)}),
     "state.pt holds weights that are not finite"),
    (lambda s: s.update(optimizer=[1]), "state.pt: 'optimizer' must be a JSON object"),
    (lambda s: s["optimizer"]["state"][0].pop("exp_avg"), "optimiser's state lacks 'exp_avg'"),
    (lambda s: s["optimizer"]["param_groups"][0].update(amsgrad=True), "optimiser's 'amsgrad'"),
], ids=["best_val", "best_epoch", "history", "sha256", "betas", "exp_avg", "nan", "optimizer",
        "no exp_avg", "amsgrad"])
def test_resume_from_a_damaged_state_is_one_sentence(change, needle, trained, workspace,
                                                     fake_data_dir):
    shutil.copytree(trained / "half", workspace / "half")
    _state(workspace / "half", change)
    before = snapshot(workspace.parent)
    result = invoke("fit", "--name", "half", "--resume", *data_args(fake_data_dir))
    result.one_sentence()
    assert needle in result.output
    assert snapshot(workspace.parent) == before


@pytest.mark.parametrize("how", ["shape", "nan"])
def test_resume_with_damaged_best_weights_is_one_sentence(how, trained, workspace,
                                                          fake_data_dir):
    shutil.copytree(trained / "half", workspace / "half")
    damage_weights(workspace / "half" / runs.MODEL, how)
    before = snapshot(workspace.parent)
    result = invoke("fit", "--name", "half", "--resume", *data_args(fake_data_dir))
    assert "model.pt" in result.one_sentence().output
    assert snapshot(workspace.parent) == before


@pytest.mark.parametrize("written", [math.nan, math.inf, "NaN", "Infinity"])
def test_a_test_mse_that_is_not_a_number_is_shown_not_refused(written, workspace,
                                                              fake_data_dir):
    """What the writer makes of NaN and infinity (null, "inf") and JSON's own NaN and
    Infinity are read back as such, and shown as "–"."""
    path = workspace / "ed3" / runs.METRICS
    metrics = json.loads(path.read_text())
    if isinstance(written, float):  # as `fit` writes it
        runs.save_json(path, {**metrics, "test_mse": written, "best_val_loss": written})
    else:
        text = json.dumps({**metrics, "test_mse": 12345.678, "best_val_loss": 12345.678})
        path.write_text(text.replace("12345.678", written))
    run = runs.open_run(workspace / "ed3")
    assert not math.isfinite(run.metrics["test_mse"])
    report = invoke("report").one_sentence(0)
    assert "left out" not in report.output
    html = (workspace / "report.html").read_text()
    assert "ed3" in html and "–" in html
    invoke("corrupt", "--run", "ed3", *args_for("corrupt", fake_data_dir)).one_sentence(0)


# --------------------------------------------------------------------------- 2. not available


def _names(run: Path, model: str | None = None, dataset: str | None = None) -> None:
    """Make the run's config.json name a model or data set that is not available here."""
    if model is not None:
        edit_json(run / runs.CONFIG, "model", model)
    if dataset is not None:
        edit_json(run / runs.CONFIG, "dataset", dataset)


@pytest.mark.parametrize("command", ["corrupt", "embed"])
@pytest.mark.parametrize("what, value", [("model", "dense:hidden=64"),
                                         ("data set", "holdout-digits")])
def test_a_run_whose_model_or_data_set_is_gone_is_exit_1(command, what, value, workspace,
                                                         fake_data_dir):
    _names(workspace / "ed3", **{"model" if what == "model" else "dataset": value})
    result = invoke(command, "--run", "ed3", *args_for(command, fake_data_dir)).one_sentence()
    assert "Invalid value" not in result.output
    assert (f"Run 'ed3' cannot be loaded: {workspace / 'ed3' / 'config.json'} names the "
            f"{what} '{value}', which is not available here") in result.output


@pytest.mark.parametrize("command", ["corrupt", "embed"])
def test_the_whole_workspace_skips_a_run_whose_model_is_gone(command, workspace,
                                                             fake_data_dir):
    _names(workspace / "ed3", model="dense:hidden=64")
    result = invoke(command, *args_for(command, fake_data_dir)).one_sentence()
    assert "Run ed3 is skipped: Run 'ed3' cannot be loaded" in result.output
    assert "could not be loaded and was skipped" in result.output
    done = runs.NOISE_TABLE if command == "corrupt" else runs.EMBEDDING_JSON
    assert (workspace / "good" / done).is_file() and not (workspace / "ed3" / done).exists()


def test_report_shows_a_run_whose_model_is_gone(workspace):
    """The report reads no weights: such a run is still reported in full."""
    _names(workspace / "ed3", model="dense:hidden=64")
    result = invoke("report").one_sentence(0)
    assert "left out" not in result.output
    assert "dense" in (workspace / "report.html").read_text()


def test_resume_of_a_run_whose_model_is_gone_names_its_config(trained, workspace,
                                                              fake_data_dir):
    shutil.copytree(trained / "half", workspace / "half")
    _names(workspace / "half", model="dense:hidden=64")  # config.json: the one record
    result = invoke("fit", "--name", "half", "--resume", *data_args(fake_data_dir))
    assert "Invalid value" not in result.one_sentence().output
    assert "Run 'half' cannot be loaded" in result.output and "config.json" in result.output


def test_study_skips_a_run_it_cannot_load_and_finishes_the_others(workspace, fake_data_dir):
    (workspace / "good").rename(workspace / "ed2")
    edit_json(workspace / "ed2" / runs.CONFIG, "ed", 3)
    shutil.rmtree(workspace / "ed3")
    shutil.copytree(workspace / "ed2", workspace / "ed4")
    _names(workspace / "ed4", model="dense:hidden=64")
    # ed2 and ed4 are finished (nothing to train); ed4's model is not available here
    result = invoke("study", "--ed", "2", "--ed", "4", "--skip-search", "--noise", "original",
                    "--val-size", "100", *data_args(fake_data_dir)).one_sentence()
    assert "Run ed4 is skipped: Run 'ed4' cannot be loaded" in result.output
    assert (workspace / "ed2" / runs.NOISE_TABLE).is_file()
    assert (workspace / "ed2" / runs.EMBEDDING_JSON).is_file()
    assert (workspace / "report.html").is_file()
    summary = json.loads((workspace / "study.json").read_text())
    assert [entry["name"] for entry in summary["unloadable"]] == ["ed4"]
    # every file the study wrote reads back through its record unchanged (issue 22)
    for path in (workspace / "ed2" / runs.METRICS, workspace / "ed2" / runs.NOISE_TABLE,
                 workspace / "ed2" / runs.EMBEDDING_JSON, workspace / runs.STUDY_FILE):
        assert runs.RECORDS[path.name].read(path).to_json() == json.loads(path.read_text())
    assert runs.StudySummary.read(workspace / runs.STUDY_FILE).unloadable[0]["name"] == "ed4"


def test_a_record_keeps_what_it_does_not_know_and_refuses_a_wrong_type(tmp_path):
    """A record (`aetool.workspace.Record`) reads a file of an older version (keys missing:
    None, not written back) or a later one (unknown keys: kept), and a damaged value is one
    sentence naming the file."""
    path = tmp_path / runs.NOISE_TABLE
    path.write_text(json.dumps({"rows": [{"label": "x", "noise": "gaussian",
                                          "params": {"sigma": 0.1}, "mse": None}],
                                "later": {"kept": True}}))
    table = runs.NoiseTable.read(path)
    assert table.ed is None and math.isnan(table.rows[0].mse)
    assert table.rows[0].spec == "gaussian:sigma=0.1"
    table.write(path)
    assert json.loads(path.read_text()) == {
        "rows": [{"label": "x", "noise": "gaussian", "params": {"sigma": 0.1}, "mse": None}],
        "later": {"kept": True}}
    path.write_text(json.dumps({"rows": [], "test_images": "many"}))
    with pytest.raises(runs.RunError, match=r"^\S*noise_table.json: 'test_images' must be a "
                       "whole number of at least 0 or null, got 'many'.$"):
        runs.NoiseTable.read(path)
