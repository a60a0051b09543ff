"""Your own images on the command line (issue 14): `--dataset PATH` through fit, corrupt,
embed and report for each layout, `aetool datasets`, and every bad input as one sentence with
the right exit code and nothing new in the workspace."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, write_fake_mnist
from dataset_files import CLASSES, write_idx_folder, write_image_folder, write_npz
from test_datasets import BAD_KINDS, bad
from typer.testing import CliRunner

from aetool import workspace as runs
from aetool.cli import app

runner = CliRunner()
SMALL = ["--ed", "4", "--max-epochs", "2", "--batch-size", "64", "--val-size", "50",
         "--device", "cpu"]


class Said:
    """A command's result, with Rich's borders and line wrapping undone."""

    def __init__(self, result) -> None:
        self.exit_code = result.exit_code
        self.stdout = result.stdout
        text = "".join(" " if c in "│╭╮╰╯─" else c for c in result.output)
        self.output = " ".join(text.split())


def invoke(*args) -> Said:
    return Said(runner.invoke(app, [str(a) for a in args]))


def tree(folder: Path) -> dict[str, bytes | None] | None:
    """Every path under `folder` (folders as None, files with their bytes); None if absent."""
    if not folder.exists():
        return None
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None
            for p in sorted(folder.rglob("*"))}


def make(kind: str, tmp_path: Path) -> Path:
    if kind == "image folder":
        return write_image_folder(tmp_path / "glyphs", 240, 60)
    if kind == "npz":
        return write_npz(tmp_path / "digits.npz")
    if kind == "idx folder":
        return write_idx_folder(tmp_path / "emnist-gz")
    if kind == "npz without labels":
        return write_npz(tmp_path / "unlabelled.npz", labelled=False)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["image folder", "npz", "idx folder", "npz without labels"])
def test_fit_corrupt_embed_report_on_a_path(kind, tmp_path):
    path, ws = make(kind, tmp_path), tmp_path / "ws"
    fitted = invoke("fit", "--dataset", path, *SMALL, "--runs", ws, "--json")
    assert fitted.exit_code == 0, fitted.output
    config = json.loads((ws / "ed4" / runs.CONFIG).read_text())
    metrics = json.loads((ws / "ed4" / runs.METRICS).read_text())
    assert config["dataset"] == str(path.resolve()) and len(metrics["dataset_sha256"]) == 64
    corrupted = invoke("corrupt", "--runs", ws, "--device", "cpu", "--noise", "original",
                       "--noise", "gaussian:sigma=0.3", "--json")
    assert corrupted.exit_code == 0, corrupted.output
    table = json.loads((ws / "ed4" / runs.NOISE_TABLE).read_text())
    assert table["test_images"] == metrics["test_images"] and len(table["rows"]) == 2
    embedded = invoke("embed", "--runs", ws, "--device", "cpu", "--json")
    assert embedded.exit_code == 0, embedded.output
    summary = json.loads((ws / "ed4" / runs.EMBEDDING_JSON).read_text())
    assert summary["dataset"] == str(path.resolve())
    if kind == "npz without labels":
        assert summary["silhouette"] is None and summary["knn_accuracy"] is None
        assert "no labels" in embedded.output
    else:
        assert 0 <= summary["knn_accuracy"] <= 1
    reported = invoke("report", "--runs", ws)
    assert reported.exit_code == 0, reported.output
    html = (ws / runs.REPORT_FILE).read_text()
    assert path.name in html and "latent_pca" not in html or "data:image/png" in html
    if kind == "image folder":
        assert summary["classes"] == list(CLASSES) and "classes: a, b, c" in html


def test_fashion_mnist_as_before(tmp_path):
    data = write_fake_mnist(tmp_path / "data", 400, 100, folder="FashionMNIST")
    ws = tmp_path / "ws"
    common = ["--runs", ws, "--device", "cpu", "--data-dir", data]
    assert invoke("fit", "--dataset", "fashion-mnist", *SMALL, *common).exit_code == 0
    assert invoke("corrupt", "--noise", "original", *common).exit_code == 0
    assert invoke("embed", *common).exit_code == 0
    assert invoke("report", "--runs", ws).exit_code == 0
    summary = json.loads((ws / "ed4" / runs.EMBEDDING_JSON).read_text())
    assert summary["dataset"] == "fashion-mnist" and summary["classes"][0] == "T-shirt/top"
    assert "T-shirt/top" in (ws / runs.REPORT_FILE).read_text()


def test_an_image_folder_without_test_is_held_out_and_the_user_told(tmp_path):
    path, ws = write_image_folder(tmp_path / "glyphs", 180, test=False), tmp_path / "ws"
    said = invoke("fit", "--dataset", path, *SMALL, "--runs", ws)
    assert said.exit_code == 0, said.output
    assert "no test/ folder: 30 of its 180 training images" in said.output


def test_resize_is_recorded_and_used_by_every_later_command(tmp_path):
    path, ws = write_image_folder(tmp_path / "big", 120, 30, size=32), tmp_path / "ws"
    refused = invoke("fit", "--dataset", path, *SMALL, "--runs", ws)
    assert refused.exit_code == 1 and "not 28x28 (32x32: 150" in refused.output
    assert tree(ws) is None
    said = invoke("fit", "--dataset", path, "--resize", *SMALL, "--runs", ws)
    assert said.exit_code == 0, said.output
    assert json.loads((ws / "ed4" / runs.CONFIG).read_text())["resize"] is True
    assert invoke("corrupt", "--runs", ws, "--device", "cpu", "--noise", "original").exit_code == 0
    wrong = invoke("fit", "--dataset", "mnist", "--resize", *SMALL, "--runs", ws, "--name", "x")
    assert wrong.exit_code == 2 and "'--resize'" in wrong.output


def test_corrupt_embed_and_resume_refuse_a_changed_file(tmp_path):
    path, ws = write_npz(tmp_path / "d.npz"), tmp_path / "ws"
    assert invoke("fit", "--dataset", path, *SMALL, "--runs", ws).exit_code == 0
    assert invoke("fit", "--dataset", path, *SMALL[:2], "--max-epochs", "3", *SMALL[4:],
                  "--runs", ws, "--name", "open").exit_code == 0
    (ws / "open" / runs.METRICS).unlink()  # an unfinished run, to resume
    write_npz(path, n_train=301)
    before = tree(ws)
    for args in (["corrupt", "--noise", "original", "--device", "cpu"],
                 ["embed", "--device", "cpu"],
                 ["fit", "--name", "open", "--resume"]):
        said = invoke(*args, "--runs", ws)
        assert said.exit_code == 1, (args, said.output)
        assert f"The data set {path.resolve()} has changed since" in said.output, said.output
        assert tree(ws) == before


def test_datasets_lists_what_is_registered_and_what_is_cached(tmp_path):
    data = write_fake_mnist(tmp_path / "data", 60, 20)
    listed = invoke("datasets", "--data-dir", data, "--json")
    assert listed.exit_code == 0, listed.output
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    assert rows["mnist"]["present"] is True and rows["kmnist"]["present"] is False
    assert rows["fashion-mnist"]["classes"][0] == "T-shirt/top"
    assert rows["emnist"]["plugin"] == "aetool.plugins.default.emnist"
    table = invoke("datasets", "--data-dir", data)
    assert table.exit_code == 0 and "emnist-letters" in table.output and "yes" in table.output


# --------------------------------------------------------------------------- bad input

BAD_OPTION = {"missing", "empty", "not a data set"}  # the others are bad files: exit 1


@pytest.mark.parametrize("kind", BAD_KINDS)
@pytest.mark.parametrize("command", ["fit", "search"])
def test_a_bad_data_set_exits_with_one_sentence_and_writes_nothing(kind, command, tmp_path):
    path, _, message = bad(tmp_path, kind)
    ws = tmp_path / "ws"
    extra = ["--epochs", "1", "--lr", "0.01", "--weight-decay", "0", "--folds", "2"] \
        if command == "search" else ["--max-epochs", "1"]
    said = invoke(command, "--dataset", path, "--ed", "4", "--device", "cpu", "--val-size", "5",
                  *extra, "--runs", ws)
    expected = 2 if kind in BAD_OPTION else 1
    assert said.exit_code == expected, said.output
    if expected == 2:
        assert "'--dataset'" in said.output
    assert re.search(message.replace(str(tmp_path), "").lstrip("/"), said.output), said.output
    assert "Traceback" not in said.output
    assert tree(ws) is None


def test_an_existing_workspace_holds_nothing_new_after_a_bad_data_set(tmp_path):
    ws = tmp_path / "ws"
    good = write_npz(tmp_path / "good.npz")
    assert invoke("fit", "--dataset", good, *SMALL, "--runs", ws).exit_code == 0
    before = tree(ws)
    for i, kind in enumerate(("corrupt png", "npz keys", "labels out of range", "mixed sizes")):
        (tmp_path / f"bad{i}").mkdir()
        path, _, _ = bad(tmp_path / f"bad{i}", kind)
        said = invoke("fit", "--dataset", path, *SMALL, "--runs", ws, "--name", "new")
        assert said.exit_code == 1, said.output
        assert tree(ws) == before, kind


def test_too_few_images_for_the_validation_size(tmp_path):
    path, ws = write_npz(tmp_path / "small.npz", n_train=40, n_test=10), tmp_path / "ws"
    said = invoke("fit", "--dataset", path, "--val-size", "100", "--runs", ws, "--device", "cpu")
    assert said.exit_code == 2, said.output
    assert "'--val-size'" in said.output and "small.npz has 40 training images" in said.output
    assert tree(ws) is None


def test_an_unknown_name_lists_the_registered_ones(tmp_path):
    said = invoke("fit", "--dataset", "cifar", "--runs", tmp_path / "ws")
    assert said.exit_code == 2
    assert "Unknown dataset 'cifar'; choose one of: mnist, fashion-mnist, kmnist" in said.output
    assert tree(tmp_path / "ws") is None


def test_the_npz_example_in_the_readme_works(tmp_path, monkeypatch):
    readme = (ROOT / "docs" / "datasets.md").read_text()
    section = readme[readme.index("## Your own data"):]
    script = re.search(r"```python\n(.*?)```", section, flags=re.DOTALL).group(1)
    monkeypatch.chdir(tmp_path)
    namespace = {"np": np}
    exec(compile(script, "docs/datasets.md", "exec"), namespace)
    npz = next(tmp_path.glob("*.npz"))
    from aetool.data import load_dataset

    loaded = load_dataset(str(npz))
    assert loaded.train_images.shape[1:] == (1, 28, 28)


def test_search_on_a_path_and_a_changed_file_refused(tmp_path):
    path, ws = write_npz(tmp_path / "d.npz"), tmp_path / "ws"
    args = ["search", "--dataset", path, "--ed", "2", "--lr", "0.01", "--weight-decay", "0",
            "--folds", "2", "--epochs", "1", "--val-size", "50", "--device", "cpu",
            "--runs", ws, "--json"]
    first = invoke(*args)
    assert first.exit_code == 0, first.output
    write_npz(path, n_train=301)
    before = tree(ws)
    again = invoke(*args)
    assert again.exit_code == 1, again.output
    assert f"The data set {path.resolve()} has changed since the search 'aetool-search-d.npz-" \
        in again.output
    assert tree(ws) == before


def test_study_takes_a_path(tmp_path):
    from aetool.experiment import StudySettings

    path = write_npz(tmp_path / "d.npz")
    StudySettings(eds=[2], dataset=str(path), skip_search=True).validate()
    said = invoke("study", "--dataset", tmp_path / "nowhere.npz", "--runs", tmp_path / "ws")
    assert said.exit_code == 2 and "nowhere.npz does not exist" in said.output


def test_search_and_study_take_resize_and_pass_it_on(tmp_path):
    from aetool.experiment import StudySettings
    from aetool.search.grid import SearchConfig, helper_settings, read_helper_settings

    path, ws = write_image_folder(tmp_path / "big", 60, 20, size=32), tmp_path / "ws"
    said = invoke("search", "--dataset", path, "--resize", "--ed", "2", "--lr", "0.01",
                  "--weight-decay", "0", "--folds", "2", "--epochs", "1", "--val-size", "20",
                  "--device", "cpu", "--runs", ws)
    assert said.exit_code == 0, said.output
    config = SearchConfig(dataset=str(path), resize=True)
    assert config.protocol()["resize"] is True and "resize" not in SearchConfig().protocol()
    assert config.fit_config(config.grid()[0], "cpu").resize is True
    assert read_helper_settings(helper_settings(config, ws, None, None))[0].resize is True
    assert StudySettings(dataset=str(path), resize=True).search_config().resize is True
    refused = invoke("study", "--dataset", "mnist", "--resize", "--runs", tmp_path / "ws2")
    assert refused.exit_code == 2 and "'--resize'" in refused.output


def test_the_report_flags_a_latent_plot_made_from_other_data(tmp_path):
    first, second = write_npz(tmp_path / "a.npz"), write_npz(tmp_path / "b.npz", n_test=80)
    ws = tmp_path / "ws"
    assert invoke("fit", "--dataset", first, *SMALL, "--runs", ws).exit_code == 0
    assert invoke("embed", "--dataset", second, "--device", "cpu", "--runs", ws).exit_code == 0
    assert invoke("report", "--runs", ws).exit_code == 0
    html = " ".join((ws / runs.REPORT_FILE).read_text().split())
    assert f"Data set {second.resolve()}" in html
    assert "Computed on other data than the run was trained on" in html
