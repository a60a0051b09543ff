"""`aetool study`: every stage runs once, a second run skips the finished work, and the
report's numbers are the ones in the workspace's JSON files."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aetool.cli import app
from aetool.experiment import StudySettings, run_study
from aetool.report.render import format_general

NUMBER = re.compile(r"[-+]?\d+\.\d+(?:e[-+]?\d+)?|[-+]?\d+e[-+]?\d+")


def tiny(**overrides) -> StudySettings:
    values = dict(eds=[2, 3], lrs=[1e-2], weight_decays=[1e-5, 1e-4], folds=2, search_epochs=1,
                  max_epochs=10, val_size=100, max_loss=1.0, device="cpu",
                  noises=["original", "uniform"])
    values.update(overrides)
    return StudySettings(**values)


@pytest.fixture(scope="module")
def study(tmp_path_factory, fake_data_dir) -> tuple[Path, dict, list[str]]:
    """A finished tiny study (2 EDs, a 1 x 2 grid on 2 folds, fits of 10 epochs, so that the
    two runs' numbers differ): its workspace, the summary run_study returned and the stages
    it reported."""
    root = tmp_path_factory.mktemp("study") / "runs"
    seen: list[str] = []
    first = run_study(tiny(), root, data_dir=fake_data_dir,
                      on_stage=lambda r: seen.append(r.stage))
    return root, first, seen


def test_study_runs_every_stage_then_skips_what_is_done(fake_data_dir, study):
    workspace, first, seen = study
    assert seen == ["search", "fit", "corrupt", "embed", "report"]
    stages = {s["stage"]: s for s in first["stages"]}
    assert stages["fit"]["done"] == ["ed2", "ed3"]
    assert stages["corrupt"]["done"] == ["ed2", "ed3"]
    assert stages["embed"]["done"] == ["ed2", "ed3"]
    for name in ("ed2", "ed3"):
        for file in ("metrics.json", "noise_table.json", "embedding.json"):
            assert (workspace / name / file).is_file()
    assert (workspace / "search" / "results.json").is_file()
    assert (workspace / "report.html").is_file()
    saved = json.loads((workspace / "study.json").read_text())
    assert [s["stage"] for s in saved["stages"]] == seen
    assert all(s["seconds"] >= 0 for s in saved["stages"])
    # the fits used the search's best setting
    best = json.loads((workspace / "search" / "results.json").read_text())["eds"]["2"]["best"]
    config = json.loads((workspace / "ed2" / "config.json").read_text())
    assert config["weight_decay"] == best["weight_decay"]

    second = run_study(tiny(), workspace, data_dir=fake_data_dir)
    stages = {s["stage"]: s for s in second["stages"]}
    for stage in ("fit", "corrupt", "embed"):
        assert stages[stage]["done"] == [] and stages[stage]["skipped"] == ["ed2", "ed3"]


def test_study_cli_without_search(fake_data_dir, workspace):
    result = CliRunner().invoke(app, [
        "study", "--ed", "2", "--skip-search", "--max-epochs", "1", "--val-size", "100",
        "--device", "cpu", "--noise", "original", "--data-dir", str(fake_data_dir), "--json",
    ])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert [s["stage"] for s in summary["stages"]] == ["fit", "corrupt", "embed", "report"]
    assert not (workspace / "search").exists()


def test_study_rejects_bad_grid(workspace):
    result = CliRunner().invoke(app, ["study", "--folds", "1"])
    assert result.exit_code == 2 and "--folds" in result.output


# --------------------------------------------------------------------------- the report's numbers


class Tables(HTMLParser):
    """Every <table> of a page: caption, header texts, and per body row the row header's text
    and each cell's text and class, plus the <h3> heading before the table."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[dict] = []
        self.heading = ""
        self._text: list[str] | None = None  # the text being collected
        self._cell: dict | None = None
        self._in_h3 = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self.tables.append({"caption": "", "head": [], "rows": [], "heading": self.heading})
        elif tag == "h3":
            self._in_h3, self.heading = True, ""
        elif tag in ("caption", "th", "td") and self.tables:
            self._text = []
            self._cell = {"tag": tag, "class": attrs.get("class") or "", "text": self._text}
        elif tag == "tr" and self.tables:
            self.tables[-1]["rows"].append([])

    def handle_endtag(self, tag):
        if tag == "h3":
            self._in_h3 = False
        elif tag in ("caption", "th", "td") and self._cell is not None:
            cell, table = self._cell, self.tables[-1]
            text = " ".join(" ".join(cell["text"]).split())
            if tag == "caption":
                table["caption"] = text
            else:
                table["rows"][-1].append({**cell, "text": text})
            self._text = self._cell = None

    def handle_data(self, data):
        if self._in_h3:
            self.heading += data
        if self._text is not None:
            self._text.append(data)


def page_tables(html: str) -> dict[str, dict]:
    """The page's tables by caption; each with `head` (the first row's texts) and `body`
    ({row header: [cells]})."""
    parser = Tables()
    parser.feed(html)
    tables = {}
    for table in parser.tables:
        head, *body = table["rows"]
        assert table["caption"] not in tables, f"two tables captioned {table['caption']!r}"
        tables[table["caption"]] = {
            "head": [c["text"] for c in head],
            "body": {row[0]["text"]: row[1:] for row in body},
        }
    return tables


def numbers(text: str) -> list[float]:
    return [float(x) for x in NUMBER.findall(text)]


def test_report_shows_the_numbers_of_the_workspace(study):
    """Every number of the noise table, the test MSE table and the search grids is the one in
    the JSON file it comes from, in the right row and column (6 decimals printed)."""
    root, _, _ = study
    tables = page_tables((root / "report.html").read_text())
    names = ["ed2", "ed3"]
    load = lambda *parts: json.loads(root.joinpath(*parts).read_text())  # noqa: E731

    # MSE under noise: one column per run, one row per noise
    noise = tables["MSE under noise"]
    assert noise["head"][0] == "noise"
    columns = [re.match(r"ED=(\d+)", h).group(1) for h in noise["head"][1:]]
    assert sorted(columns) == ["2", "3"]  # each column is checked against its own run below
    saved = {name: load(name, "noise_table.json") for name in names}
    labels = [row["label"] for row in saved["ed2"]["rows"]]
    assert list(noise["body"]) == labels == ["original", "uniform"]
    for label, cells in noise["body"].items():
        mses = [next(r["mse"] for r in saved[f"ed{ed}"]["rows"] if r["label"] == label)
                for ed in columns]
        assert [float(c["text"]) for c in cells] == pytest.approx(mses, abs=5.1e-7), label
        lowest = [("lowest" in c["class"]) for c in cells]
        assert lowest == [m == min(mses) for m in mses], label
    assert len({c["text"] for cells in noise["body"].values() for c in cells}) == 4

    # test MSE per run
    test = tables["Test MSE per run"]
    assert list(test["body"]) == names
    for name, cells in test["body"].items():
        metrics, config = load(name, "metrics.json"), load(name, "config.json")
        ed, mse, best_val, epochs, images = (c["text"] for c in cells)
        assert int(ed) == config["ed"]
        assert float(mse) == pytest.approx(metrics["test_mse"], abs=5.1e-7)
        assert float(best_val) == pytest.approx(metrics["best_val_loss"], abs=5.1e-7)
        assert epochs == f"{metrics['best_epoch']} / {metrics['epochs']}"
        assert int(images) == metrics["test_images"] == 200
    assert test["body"]["ed2"][1]["text"] != test["body"]["ed3"][1]["text"]

    # the search grid per ED: rows lr, columns weight decay, mean ± std of the fold losses
    results = load("search", "results.json")
    means = {f"{s['val_mean']:.6f}" for ed in ("2", "3") for s in results["eds"][ed]["settings"]}
    assert len(means) == 4  # every cell differs, so a swap shows
    for ed in ("2", "3"):
        grid = tables[f"ED={ed}: mean validation MSE by learning rate and weight decay"]
        settings = results["eds"][ed]["settings"]
        wds = grid["head"][1:]
        assert wds == [format_general(w) for w in results["grid"]["weight_decay"]]
        assert list(grid["body"]) == [format_general(lr) for lr in results["grid"]["lr"]]
        for lr_text, cells in grid["body"].items():
            for wd_text, cell in zip(wds, cells, strict=True):
                setting = next(s for s in settings if format_general(s["lr"]) == lr_text
                               and format_general(s["weight_decay"]) == wd_text)
                assert numbers(cell["text"])[:2] == pytest.approx(
                    [setting["val_mean"], setting["val_std"]], abs=5.1e-7), (ed, lr_text, wd_text)
                best = results["eds"][ed]["best"]
                is_best = (setting["lr"], setting["weight_decay"]) == (best["lr"],
                                                                       best["weight_decay"])
                assert ("best" in cell["class"].split()) == is_best
                assert ("★ best" in cell["text"]) == is_best
                assert ("dropped" in cell["class"].split()) == (not setting["kept"])
