"""Every figure the docs' benchmark pages (and the README's CPU-build paragraph) quote comes
from a committed file.

The speed figures must match the result files that `benchmarks/speed.py` and
`benchmarks/search_speed.py` wrote into `benchmarks/results/` (cited next to each table),
to the digits printed; the report checkpoints' test MSE in the accuracy table is recomputed
from the checkpoints. After the checks, any decimal number left in those sections that no
check accounted for fails the test: a new figure needs a result file and a check here.
(The README's Table 1 is checked by tests/evaluate/test_corrupt.py.)
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT

from aetool.models import load_model, parse_model_spec
from aetool.train.loop import evaluate

README = ROOT / "README.md"
DOCS = ROOT / "docs"
RESULTS = ROOT / "benchmarks" / "results"
DECIMAL = re.compile(r"(?<![\w.])\d+\.\d+(?![\w.])")


def load_benchmark(name: str):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import importlib

        return importlib.import_module(name)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def section(page: Path, start: str, end: str | None = None) -> str:
    """The text of `page` from `start` up to `end` (or to the end of the page)."""
    text = page.read_text()
    assert start in text and (end is None or end in text), (page, start, end)
    return text[text.index(start) : text.index(end, text.index(start)) if end else None]


def prose(markdown: str) -> str:
    """The text without fenced code blocks and inline code (commands, not figures)."""
    markdown = re.sub(r"```.*?```", "", markdown, flags=re.DOTALL)
    return re.sub(r"`[^`\n]*`", "", markdown)


def cited(markdown: str, prefix: str) -> dict:
    """The one result file named `prefix*.json` that the section cites, loaded; it must be in
    the repository (and tracked by git, where there is a git checkout)."""
    names = sorted(set(re.findall(rf"benchmarks/results/({re.escape(prefix)}[\w.-]*\.json)",
                                  markdown)))
    assert len(names) == 1, f"the README should cite one {prefix}*.json file, not {names}"
    path = RESULTS / names[0]
    assert path.is_file(), f"{path} is cited by the README but missing"
    if (ROOT / ".git").exists() and shutil.which("git"):
        tracked = subprocess.run(["git", "ls-files", "--error-unmatch", str(path)], cwd=ROOT,
                                 capture_output=True)
        assert tracked.returncode == 0, f"{path} is cited by the README but not committed"
    return json.loads(path.read_text())


def table_rows(markdown: str, header_start: str) -> list[list[str]]:
    lines = markdown[markdown.index(header_start):].splitlines()[2:]
    rows = []
    for line in lines:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def unaccounted(markdown: str, checked: set[str]) -> list[str]:
    return [n for n in DECIMAL.findall(prose(markdown)) if n not in checked]


def cpu_words(environment: dict) -> list[str]:
    """What the README must say about the CPU a file was measured on."""
    cpu = environment["cpu"]
    words = [cpu["model"], f"{environment['torch_threads']} thread"]
    if "avx512f" in cpu["flags"]:
        words.append("AVX-512")
    elif "avx2" in cpu["flags"]:
        words.append("AVX2")
    return words


def test_speed_figures_match_the_committed_results():
    text = section(DOCS / "benchmarks.md", "\n## Speed\n", "### Roofline")
    checked: set[str] = set()
    batch1000 = cited(text, "speed-cpu-batch1000-")
    env, summary = batch1000["environment"], batch1000["results"]
    assert summary["batch_size"] == 1000 and summary["ed"] == 4 and summary["device"] == "cpu"
    assert f"`{env['command']}`" in text, "the README should show the command that was run"
    by_name = {r["name"]: r for r in summary["results"]}

    def pick(prefix: str, mode: str | None = None) -> dict:
        (row,) = [r for name, r in by_name.items() if name.startswith(prefix)]
        if mode is not None:
            assert row["mode"] == mode, f"{row['name']} ran as {row['mode']}, not {mode}"
        return row

    contenders = [pick("plain"), pick("aetool auto", "tuned"), pick("aetool compile", "compile"),
                  pick("aetool eager", "eager"), pick("aetool fit")]
    (cpu_row,) = [r for r in table_rows(text, "| device |") if r[0].startswith("CPU")]
    device, *cells = cpu_row
    torch_version = summary["torch"].split("+")[0]
    for word in [*cpu_words(env), f"torch {torch_version}",
                 f"num_workers={summary['workers']}"]:
        assert word in device, f"{word!r} missing from the README's CPU row: {device}"
    checked.add(torch_version)
    assert summary["epochs"] >= 5 and f"median of {summary['epochs']}" in text
    for cell, row in zip(cells, contenders, strict=True):
        match = re.fullmatch(r"\**([\d.]+) s(?: \(([\d.]+)×\))?\**", cell)
        assert match, cell
        seconds, ratio = match.groups()
        assert seconds == f"{row['seconds_per_epoch']:.2f}", (row["name"], cell)
        checked.add(seconds)
        if row is contenders[0]:
            assert ratio is None
        else:
            assert ratio == f"{row['speedup_vs_plain']:.1f}", (row["name"], cell)
            checked.add(ratio)
    first_compile = re.search(r"its first epoch, which compiles, took ([\d.]+) s",
                              " ".join(text.split()))
    assert first_compile and first_compile.group(1) == f"{contenders[2]['first_epoch_seconds']:.0f}"

    batch128 = cited(text, "speed-cpu-batch128-")
    for result in (batch1000, batch128):  # the figures come from an idle machine
        load = result["environment"].get("load_average_at_start")
        assert load is not None and load[0] < 0.5 and not result["environment"]["busy"]
    assert "refuses to start at a 1-minute load average of 0.5 or more" in " ".join(text.split())
    checked.add("0.5")
    small = {r["mode"]: r for r in batch128["results"]["results"] if r.get("mode")}
    assert batch128["results"]["batch_size"] == 128
    assert f"`{batch128['environment']['command']}`" in text
    assert cpu_words(batch128["environment"]) == cpu_words(env)
    step = re.search(r"`tuned` takes ([\d.]+) ms a step against ([\d.]+) ms for `eager` "
                     r"\(an epoch of the 50,000 training images in about ([\d.]+) s\)",
                     " ".join(text.split()))
    assert step, "the README's batch-128 sentence changed; update this test"
    tuned, eager, epoch = step.groups()
    assert tuned == f"{small['tuned']['ms_per_step']:.1f}"
    assert eager == f"{small['eager']['ms_per_step']:.1f}"
    assert epoch == f"{small['tuned']['ms_per_step'] * math.ceil(50_000 / 128) / 1000:.1f}"
    checked.update(step.groups())
    assert unaccounted(text, checked) == [], "figures without a result file behind them"


def test_roofline_figures_match_the_committed_results():
    """Every figure of the roofline table and its prose comes from the cited result file,
    which was made on an idle machine."""
    text = section(DOCS / "benchmarks.md", "### Roofline", "## Accuracy against the report")
    roofline = cited(text, "roofline-cpu-")
    env, rows = roofline["environment"], roofline["results"]["rows"]
    assert env["busy"] is False and env["load_average_at_start"][0] < 0.5
    assert f"load {env['load_average_at_start'][0]:.2f} at the start" in text
    for word in cpu_words(env)[:1] + ["AVX2 only"]:
        assert word in text
    assert "avx512f" not in env["cpu"]["flags"] and "avx512_bf16" not in env["cpu"]["flags"]
    checked = {f"{env['load_average_at_start'][0]:.2f}"}
    table = table_rows(text, "| model, batch |")
    assert len(table) == len(rows)
    for cells, row in zip(table, rows, strict=True):
        expected = [f"`{row['model']}`, {row['batch_size']}", f"`{row['precision']}`",
                    f"{row['flops_per_step'] / 1e9:.2f}",
                    f"{row['gemm_flops_per_second'] / 1e9:.1f} GFLOP/s",
                    f"{row['floor_seconds_per_epoch']:.2f} s",
                    f"{row['measured_seconds_per_epoch']:.2f} s", f"{row['ratio']:.1f}x"]
        assert cells == expected
        checked.update(re.findall(r"\d+\.\d+", " ".join(expected)))
    rates = {row["precision"]: row["gemm_flops_per_second"] for row in rows}
    assert f"({rates['32'] / rates['bf16-mixed']:.0f} times slower than float32)" in \
        " ".join(text.split())
    slowdown = [rows[i + 1]["measured_seconds_per_epoch"] / rows[i]["measured_seconds_per_epoch"]
                for i in (0, 2)]
    assert (f"take {slowdown[0]:.0f} (`course`) and {slowdown[1]:.0f} (`wide`) times as long"
            in " ".join(text.split()))
    assert unaccounted(text, checked) == [], "figures without a result file behind them"


def test_search_speed_figures_match_the_committed_results():
    text = section(DOCS / "benchmarks.md", "## Speed of the grid search\n\nA grid is many small")
    result = cited(text, "search_speed-cpu-")
    env, numbers = result["environment"], result["results"]["seconds_per_epoch"]
    assert f"`{env['command']}`" in text, "the README should show the command that was run"
    assert result["results"]["models"] == 27
    for word in cpu_words(env):
        assert word in " ".join(text.split()), f"{word!r}: say which CPU measured it"
    checked: set[str] = set()
    rows = {r[0]: r[1:] for r in table_rows(text, "| 27 models, one epoch |")}
    expected = {"one model alone": ("single", None),
                "sequentially (fit's loop)": ("sequential", "1"),
                "vmap, all 27 together": ("vmap_27", "x"), "vmap, groups of 9": ("vmap_9", "x"),
                "vmap, groups of 3": ("vmap_3", "x")}
    assert list(rows) == list(expected)
    for label, (key, ratio) in expected.items():
        seconds, versus = rows[label]
        digits = 2 if key == "single" else 1
        assert seconds == f"{numbers[key]:.{digits}f}", (label, seconds)
        checked.add(seconds)
        if ratio == "x":
            assert versus == f"{numbers['sequential'] / numbers[key]:.2f}x", (label, versus)
            checked.add(versus.removesuffix("x"))
        else:
            assert versus == (ratio or ""), (label, versus)
    assert unaccounted(text, checked) == [], "figures without a result file behind them"


def test_accuracy_figures_are_the_checkpoints_and_the_targets(real_mnist, seed_checkpoints):
    """The report's column is each checkpoint's test MSE, recomputed here; the targets are 10%
    below it; aetool's own figures are quoted only with a cited result file."""
    accuracy = load_benchmark("accuracy")
    text = section(DOCS / "benchmarks.md", "## Accuracy against the report",
                   "## Speed of the grid search")
    rows = table_rows(text, "| ED | report's checkpoint |")
    assert [int(r[0]) for r in rows] == [4, 8, 16, 32]
    checked: set[str] = set()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for ed_text, report, target, *_ in rows:
            ed = int(ed_text)
            model = load_model(seed_checkpoints / f"net_params_{ed}.pth")
            mse = evaluate(model, real_mnist.test_images)
            assert report == f"{mse:.5f}" == f"{accuracy.REPORT_TEST_MSE[ed]:.5f}", ed
            assert target == f"<= {accuracy.TARGET_TEST_MSE[ed]:g}", ed
            assert accuracy.TARGET_TEST_MSE[ed] == pytest.approx(0.9 * mse, abs=1e-4)
            checked.update({report, target.removeprefix("<= ")})
    finally:
        torch.set_num_threads(threads)
    checked.update(accuracy_rows(text))
    checked.update(model_speed(text))
    assert unaccounted(text, checked) == [], "figures without a result file behind them"


def cited_files(markdown: str, prefix: str) -> list[dict]:
    """Every result file named `prefix*.json` the section cites (each must be committed)."""
    names = sorted(set(re.findall(rf"benchmarks/results/({re.escape(prefix)}[\w.-]*\.json)",
                                  markdown)))
    return [cited(f"benchmarks/results/{name}", prefix) for name in names]


def accuracy_rows(text: str) -> set[str]:
    """The table of shorter runs: each row's epochs, test MSE, gain and target are its file's."""
    checked: set[str] = set()
    accuracy = load_benchmark("accuracy")
    for line in text.splitlines():
        found = re.search(r"benchmarks/results/(accuracy-[\w.-]+\.json)", line)
        if not (line.startswith("| `") and found):
            continue
        (result,) = cited_files(found.group(0), "accuracy-")
        (row,) = result["results"]["rows"]
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        model = str(row.get("model", "course")).split(":")[0]
        assert cells[0].startswith(f"`{model}`") and cells[1] == str(row["ed"])
        # A variant names its parameters, e.g. `wide` (`depth=3`); a plain name is the default
        # (a file written before a parameter existed holds its default).
        named = ",".join(re.findall(r"`(\w+=[^`]+)`", cells[0]))
        written = parse_model_spec(f"{model}:{named}" if named else model)
        assert written.params == parse_model_spec(row.get("model")).params, line
        assert cells[2] == str(row["epochs"]) and cells[3] == f"{row['test_mse']:.5f}"
        assert cells[4] == f"-{100 * row['improvement_vs_report']:.1f}%"
        target = (accuracy.TARGET_TEST_MSE if model == "course"
                  else accuracy.MODEL_TARGET_TEST_MSE)[row["ed"]]
        assert cells[5] == f"<= {target:.4f}" and row["target_test_mse"] == target
        assert cells[6].startswith("yes" if row["passed"] else "no")
        checked.update({cells[3], cells[4].strip("-%"), cells[5].removeprefix("<= ")})
    return checked


def model_speed(text: str) -> set[str]:
    """The epoch time of each model against the course model's, from model_speed.py's file."""
    checked: set[str] = set()
    for result in cited_files(text, "model_speed-"):
        course, *others = result["results"]["rows"]
        assert course["model"] == "course"
        flat = " ".join(text.split())
        for row in others:
            ratio, seconds = f"{row['ratio']:.1f}", f"{row['median_seconds']:.2f}"
            assert f"about {ratio} times" in flat
            assert f"{seconds} s against {course['median_seconds']:.2f} s" in flat
            checked.update({ratio, seconds, f"{course['median_seconds']:.2f}"})
    return checked


def test_cpu_install_figures_match_the_committed_results():
    """The sizes in "Without a GPU" (issue 15) come from benchmarks/install_size.py."""
    text = section(README, "### Without a GPU: PyTorch's CPU build", "## Commands")
    result = cited(text, "install_size-")
    cuda, cpu = result["results"]["venvs"]["cuda"], result["results"]["venvs"]["cpu"]
    (wheel,) = result["results"]["wheels"].values()
    flat = " ".join(text.split())
    assert f"{cuda['total_mb']:,} MB installed for torch {cuda['torch']}" in flat
    assert f"torch {cpu['torch']} installs in {cpu['total_mb']:,} MB (a {wheel['mb']} MB wheel)" \
        in flat
    saved = f"{(cuda['total_mb'] - cpu['total_mb']) / 1024:.1f}"
    assert f"about {saved} GB" in flat
    assert unaccounted(text, {saved}) == [], "figures without a result file behind them"


def test_time_budget_figures_match_the_committed_results():
    """Test MSE against `fit --time` (issue 15) comes from benchmarks/time_budget.py, and the
    report's checkpoint line is the same figure as the accuracy table's."""
    from aetool.report.budget import REPORT_CHECKPOINT_MSE

    accuracy = load_benchmark("accuracy")
    for ed, mse in REPORT_CHECKPOINT_MSE.items():
        assert f"{mse:.5f}" == f"{accuracy.REPORT_TEST_MSE[ed]:.5f}"
    text = section(DOCS / "fit.md", "## Training to a time budget", "## The run folder")
    if "benchmarks/results/time_budget-" not in text:
        assert unaccounted(text, set()) == []
        return
    result = cited(text, "time_budget-")
    env, numbers = result["environment"], result["results"]
    flat = " ".join(text.split())
    for word in cpu_words(env)[:1]:
        assert word in flat, f"{word!r}: say which CPU measured it"
    checked = {f"{numbers['report_test_mse']:.5f}"}
    rows = table_rows(text, "| `--time` |")
    assert len(rows) == len(numbers["rows"])
    for cells, row in zip(rows, numbers["rows"], strict=True):
        budget, epochs, wall, mse = cells[:4]
        assert budget == f"`{row['budget']}`" and epochs == str(row["epochs"])
        assert wall == f"{row['wall_seconds']:.1f}" and mse == f"{row['test_mse']:.5f}"
        checked.update({wall, mse})
    if "benchmarks/results/time_budget_check-" in text:  # a second, single-budget run
        (check,) = cited(text, "time_budget_check-")["results"]["rows"]
        wall, mse = f"{check['wall_seconds']:.1f}", f"{check['test_mse']:.5f}"
        assert f"`--time {check['budget']}` run" in flat
        assert f"took {wall} s in all" in flat and f"test MSE of {mse}" in flat
        checked.update({wall, mse})
    png = re.search(r"benchmarks/results/(time_budget-[\w.-]+\.png)", text)
    assert png and (RESULTS / png.group(1)).is_file()
    assert unaccounted(text, checked) == [], "figures without a result file behind them"


def test_search_workers_figures_match_the_committed_results():
    """`search --workers 2 --threads 1` against one worker with 2 threads (issue 15)."""
    text = section(DOCS / "operations.md", "`tests/search/test_postgres.py` runs this recipe",
                   "Without a database")
    if "benchmarks/results/search_workers-" not in text:
        assert unaccounted(text, set()) == []
        return
    result = cited(text, "search_workers-")
    best = result["results"]["best"]
    flat = " ".join(text.split())
    two, one = f"{best['2x1']:.1f}", f"{best['1x2']:.1f}"
    assert f"{two} s with `--workers 2 --threads 1`" in flat
    assert f"{one} s for one worker with `--threads 2`" in flat
    assert cpu_words(result["environment"])[0] in flat
    assert unaccounted(text, {two, one}) == [], "figures without a result file behind them"


def test_precision_figures_match_the_committed_results():
    """fit.md's account of bf16-mixed against 32 is the committed precision checks': every
    percentage, the epochs, the images and which side of float32 bf16 ended on."""
    text = section(DOCS / "fit.md", "## Precision", "## The run folder")
    flat = " ".join(text.split())
    names = sorted(set(re.findall(r"benchmarks/results/(precision_check-[\w.-]*\.json)", text)))
    assert len(names) == 2, names
    rows = {}
    for name in names:
        result = json.loads((RESULTS / name).read_text())["results"]
        for row in result["rows"]:
            rows[(row["model"], row["ed"])] = (row, result["train_images"])
    expected = set()
    for (model, _ed), (row, images) in rows.items():
        expected |= {round(abs(row["relative_gap"]) * 100), round(abs(row["seed_gap"]) * 100)}
        assert f"{row['epochs']} epochs of `{model}`" in flat
        assert (images is None) == (model == "course")  # course on all of MNIST
        if images is not None:
            assert f"on {images:,} images" in flat
    course = [rows[("course", ed)][0]["relative_gap"] for ed in (4, 32)]
    assert all(g < 0 for g in course) and "below* `32` at ED 4 and 32" in flat
    wide = [rows[("wide", ed)][0]["relative_gap"] for ed in (4, 32)]
    assert all(g > 0 for g in wide)
    said = {int(p) for p in re.findall(r"(\d+)%", flat)} - {1}  # 1%: the criterion
    assert said == expected, (said, expected)
