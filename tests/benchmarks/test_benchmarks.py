"""The benchmark scripts run end to end on small data and report what they measured.

They are measurements, not tests of speed or accuracy: these tests only check that the
scripts work (tables, JSON, reuse of finished runs), on the fabricated data set.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from fsguard import guarded_env

from aetool.errors import AetoolError, SettingError

BENCHMARKS = ROOT / "benchmarks"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_accuracy_trains_reuses_and_refuses_other_settings(
    fake_data_dir, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("AETOOL_DATA", str(fake_data_dir))
    accuracy = load_script("accuracy")
    args = ["--eds", "4", "--max-epochs", "2", "--batch-size", "100", "--val-size", "100",
            "--device", "cpu", "--workspace", str(tmp_path), "--json",
            "--results", str(tmp_path / "results")]

    assert accuracy.main(args) == 2  # two epochs on 500 images do not beat the report
    rows = json.loads(capsys.readouterr().out)
    assert_result_file(tmp_path / "results", "accuracy-best-", "accuracy.py", args,
                       {"rows": rows, "wall_seconds": pytest.approx(1, abs=1000)})
    assert [r["ed"] for r in rows] == [4] and rows[0]["epochs"] == 2
    assert rows[0]["preset"] == "best" and rows[0]["settings"]["batch_size"] == 100
    assert rows[0]["target_test_mse"] == pytest.approx(0.0243)
    assert rows[0]["passed"] is False and rows[0]["test_mse"] > 0.0243

    for path in (tmp_path / "results").iterdir():
        path.unlink()
    assert accuracy.main(args) == 2  # the finished run is reused, not trained again
    out = capsys.readouterr()
    assert "reusing the finished run" in out.err
    assert json.loads(out.out)[0]["test_mse"] == rows[0]["test_mse"]

    with pytest.raises(AetoolError, match="other settings .*batch_size"):
        accuracy.main([*args[:5], "50", *args[6:]])


def test_accuracy_trains_to_a_time_budget_and_refuses_a_bad_one(
    fake_data_dir, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("AETOOL_DATA", str(fake_data_dir))
    accuracy = load_script("accuracy")
    args = ["--eds", "4", "--time", "20s", "--max-epochs", "3", "--batch-size", "100",
            "--val-size", "100", "--device", "cpu", "--workspace", str(tmp_path), "--json",
            "--results", ""]
    assert accuracy.main(args) == 2
    row = json.loads(capsys.readouterr().out)[0]
    assert row["settings"]["time_budget"] == 20.0 and row["settings"]["val_size"] == 100
    assert 1 <= row["epochs"] <= 3 and row["settings"]["max_epochs"] == row["epochs"]
    config = json.loads((tmp_path / "accuracy-best-ed4" / "config.json").read_text())
    assert config["time_budget"] == 20.0

    assert accuracy.main(["--eds", "4", "--time", "soon", "--results", ""]) == 2
    assert "--time: 'soon' is not a duration" in capsys.readouterr().err


def test_speed_times_the_plain_loop_and_aetool(fake_data_dir, capsys, tmp_path):
    speed = load_script("speed")
    args = ["--device", "cpu", "--epochs", "1", "--batch-size", "100", "--modes", "auto,eager",
            "--data-dir", str(fake_data_dir), "--json", "--results", str(tmp_path), "--allow-busy"]
    assert speed.main(args) == 0
    result = json.loads(capsys.readouterr().out)
    text = json.dumps(result)
    assert "plain" in text and "eager" in text and "tuned" in text
    assert all(r["steps_per_epoch"] == 6 for r in result["results"])
    assert_result_file(tmp_path, "speed-cpu-batch100-", "speed.py", args, result)


def test_search_speed_times_sequential_and_vmap(fake_data_dir, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("AETOOL_DATA", str(fake_data_dir))
    search_speed = load_script("search_speed")
    args = ["--device", "cpu", "--images", "90", "--batch-size", "30", "--val-size", "100",
            "--parallel", "27",
            "--json", "--results", str(tmp_path), "--allow-busy"]
    search_speed.main(args)
    out = capsys.readouterr().out
    result = json.loads(out[out.index("{"):])
    assert result["models"] == 27 and result["images"] == 90
    assert set(result["seconds_per_epoch"]) == {"single", "sequential", "vmap_27"}
    assert_result_file(tmp_path, "search_speed-cpu-", "search_speed.py", args, result)


def test_nothing_is_saved_with_an_empty_results_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    record = load_script("record")
    assert record.save_result("speed", "speed.py", {}, "", "cpu", []) is None
    assert list(tmp_path.iterdir()) == []


def assert_result_file(folder: Path, prefix: str, script: str, args: list[str], results):
    """The one results file in `folder`: its results, the command that made them and the
    conditions (date, device, CPU flags, versions)."""
    import shlex

    import torch

    (path,) = folder.iterdir()
    assert path.name.startswith(prefix) and path.suffix == ".json"
    saved = json.loads(path.read_text())
    assert saved["kind"] == prefix.split("-")[0]
    assert saved["results"] == results
    env = saved["environment"]
    assert env["command"] == shlex.join(["python", f"benchmarks/{script}", *args])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", env["date"])
    assert env["device"] == "cpu" and env["versions"]["torch"] == torch.__version__
    assert env["cpu"]["model"] and env["torch_threads"] >= 1
    if Path("/proc/cpuinfo").is_file():
        assert env["cpu"]["flags"] and all(" " not in f for f in env["cpu"]["flags"])


def test_model_speed_times_every_model_in_one_process(fake_data_dir, capsys, tmp_path):
    model_speed = load_script("model_speed")
    args = ["--model", "course", "--model", "wide:width=8,hidden=64", "--epochs", "2",
            "--threads", "1",
            "--device", "cpu", "--data-dir", str(fake_data_dir), "--val-size", "100",
            "--batch-size", "100", "--json", "--results", str(tmp_path), "--allow-busy"]
    assert model_speed.main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in result["rows"]] == ["course",
                                                   "wide:width=8,hidden=64,groups=8,depth=1"]
    assert result["train_images"] == 500 and result["threads"] == 1
    for row in result["rows"]:
        assert len(row["seconds"]) == 2 and row["median_seconds"] > 0
    assert result["rows"][0]["ratio"] == 1.0
    assert result["rows"][1]["parameters"] > result["rows"][0]["parameters"]
    assert_result_file(tmp_path, "model_speed-", "model_speed.py", args, result)


def test_two_results_in_the_same_second_keep_a_file_each(tmp_path, monkeypatch):
    record = load_script("record")
    monkeypatch.setattr(record, "environment",
                        lambda script, device, argv: {"date": "2026-11-28T03:28:51Z"})
    first = record.save_result("accuracy", "accuracy.py", {"ed": 4}, str(tmp_path), tag="best")
    second = record.save_result("accuracy", "accuracy.py", {"ed": 8}, str(tmp_path), tag="best")
    assert first != second and first.name == "accuracy-best-20261128T032851Z.json"
    assert json.loads(first.read_text())["results"] == {"ed": 4}
    assert json.loads(second.read_text())["results"] == {"ed": 8}


def test_time_budget_merges_earlier_files_into_one_curve(tmp_path, monkeypatch):
    """Budgets measured at different times make one curve: rows in budget order, each naming
    the file (date, command, load) it came from; a budget measured twice is refused."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    time_budget = load_script("time_budget")

    def earlier(name: str, date: str, rows: list[tuple[str, float, float]], ed: int = 8) -> Path:
        path = tmp_path / name
        path.write_text(json.dumps({"kind": "time_budget", "environment": {
            "date": date, "command": f"python benchmarks/time_budget.py {name}",
            "load_average_at_end": [1.0, 1.0, 1.0]}, "results": {"ed": ed, "rows": [
                {"budget": b, "budget_seconds": s, "test_mse": m} for b, s, m in rows]}}))
        return path

    late = earlier("late.json", "2026-11-28T05:00:00Z", [("60m", 3600.0, 0.0240)])
    early = earlier("early.json", "2026-11-28T02:00:00Z",
                    [("5m", 300.0, 0.0255), ("15m", 900.0, 0.0249)])
    args = ["--merge", str(late), str(early), "--results", str(tmp_path / "out")]
    time_budget.main(args)

    (png,) = (tmp_path / "out").glob("*.png")
    assert png.read_bytes().startswith(b"\x89PNG")
    (path,) = (tmp_path / "out").glob("*.json")
    saved = json.loads(path.read_text())
    assert saved["environment"]["command"].endswith(" ".join(args))
    rows = saved["results"]["rows"]
    assert saved["results"]["merged"] is True and saved["results"]["ed"] == 8
    assert saved["results"]["report_test_mse"] == 0.01608  # the files' ED, not --ed's default
    assert [r["budget"] for r in rows] == ["5m", "15m", "60m"]
    assert [r["source"]["file"] for r in rows] == ["early.json", "early.json", "late.json"]
    assert rows[2]["source"]["date"] == "2026-11-28T05:00:00Z"

    with pytest.raises(SystemExit, match="a budget twice"):
        time_budget.main(["--merge", str(early), str(early), "--results", ""])
    other = earlier("other.json", "2026-11-28T06:00:00Z", [("2m", 120.0, 0.03)], ed=4)
    with pytest.raises(SystemExit, match="different EDs"):
        time_budget.main(["--merge", str(early), str(other), "--results", ""])


def test_roofline_reports_flops_floor_and_measured_epoch(capsys, tmp_path):
    roofline = load_script("roofline")
    args = ["--device", "cpu", "--threads", "1", "--models", "course", "--batch-size", "16",
            "--timed-images", "32", "--gemm-size", "64", "--gemm-reps", "1", "--json",
            "--results", str(tmp_path), "--allow-busy"]
    assert roofline.main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert [(r["model"], r["precision"]) for r in result["rows"]] == [
        ("course", "32"), ("course", "bf16-mixed")]
    for r in result["rows"]:
        assert r["flops_per_step"] > 0 and r["gemm_flops_per_second"] > 0
        assert r["floor_seconds_per_epoch"] == pytest.approx(
            r["flops_per_step"] / 16 * 60_000 / r["gemm_flops_per_second"])
        assert r["ratio"] == pytest.approx(r["measured_seconds_per_epoch"]
                                           / r["floor_seconds_per_epoch"])
    assert result["rows"][0]["flops_per_step"] == result["rows"][1]["flops_per_step"]
    assert_result_file(tmp_path, "roofline-cpu-", "roofline.py", args, result)
    env = json.loads(next(tmp_path.iterdir()).read_text())["environment"]
    assert len(env["load_average_at_start"]) == 3 and env["busy"] == result["busy"]


def test_speed_benchmarks_refuse_a_busy_machine(tmp_path, monkeypatch, capsys):
    roofline = load_script("roofline")
    record = sys.modules["record"]  # the sibling module the script imported
    monkeypatch.setattr(record, "load_average", lambda: [3.0, 2.0, 1.0])
    with pytest.raises(SystemExit) as info:
        roofline.main(["--results", str(tmp_path)])
    assert info.value.code == 2 and "busy" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
    monkeypatch.setattr(record, "load_average", lambda: [0.1, 0.2, 0.3])
    assert record.check_idle(False) is False


def test_precision_check_smoke_compares_32_and_bf16(fake_data_dir, capsys, tmp_path):
    check = load_script("precision_check")
    args = ["--smoke", "--device", "cpu", "--data-dir", str(fake_data_dir), "--json",
            "--results", str(tmp_path)]
    assert check.main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert [(r["model"], r["ed"]) for r in result["rows"]] == [
        ("course", 4), ("wide:width=8,hidden=32", 4)]
    for r in result["rows"]:
        fp32, bf16 = r["runs"]["32"]["test_mse"], r["runs"]["bf16-mixed"]["test_mse"]
        assert r["relative_gap"] == pytest.approx(bf16 / fp32 - 1)
        assert r["within_1_percent"] == (abs(r["relative_gap"]) <= 0.01)
    assert_result_file(tmp_path, "precision_check-", "precision_check.py", args, result)
    with pytest.raises(SystemExit) as info:
        check.main(["--help"])
    assert info.value.code == 0 and "--smoke" in capsys.readouterr().out


def test_precision_check_trains_on_the_first_n_images_of_the_usual_split(
        fake_data_dir, capsys, tmp_path, monkeypatch):
    check = load_script("precision_check")
    seen = []
    real_fit_run = check.training.fit_run

    def spy(config, workspace, name, **options):
        split = options["split"]
        seen.append((name, split.train.shape[0], split.val.shape[0], split.test.shape[0]))
        return real_fit_run(config, workspace, name, **options)

    monkeypatch.setattr(check.training, "fit_run", spy)
    args = ["--smoke", "--device", "cpu", "--data-dir",
            str(fake_data_dir), "--json", "--results", "", "--train-images", "40",
            "--control-seed", "7"]
    assert check.main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["train_images"] == 40
    # two models in both precisions and float32 with seed 7, each on the same 40 training
    # images and the same validation and test images as the whole split
    assert [s[1:] for s in seen] == [(40, 100, seen[0][3])] * 6
    assert [s[0] for s in seen[:3]] == ["precision-course-ed4-32-40",
                                        "precision-course-ed4-bf16-mixed-40",
                                        "precision-course-ed4-32-seed7-40"]
    for r in result["rows"]:
        fp32, other = r["runs"]["32"]["test_mse"], r["runs"]["32-seed7"]["test_mse"]
        assert r["seed_gap"] == pytest.approx(other / fp32 - 1) and r["seed_gap"] != 0
        assert r["within_seed_spread"] == (abs(r["relative_gap"]) <= abs(r["seed_gap"]))
    with pytest.raises(SettingError, match="--train-images must be from 1"):
        check.main(args[:-3] + ["100000"])


def test_precision_check_refuses_too_many_training_images_in_one_sentence(fake_data_dir):
    script = ROOT / "benchmarks" / "precision_check.py"
    result = subprocess.run(
        [sys.executable, str(script), "--smoke", "--device", "cpu", "--data-dir",
         str(fake_data_dir), "--results", "", "--train-images", "100000"],
        capture_output=True, text=True, timeout=120, env=guarded_env(OMP_NUM_THREADS="1"))
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().startswith("--train-images must be from 1 to")
    assert len(result.stderr.strip().splitlines()) == 1 and result.stdout == ""
