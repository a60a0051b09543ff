"""The pictures in the docs come from real runs, made by scripts/pictures.py (issue 23): every
picture under docs/img/ that README.md or a page in docs/ shows is recorded in
docs/img/pictures.json with its sha256 (a picture edited or swapped by hand fails), every record
is shown somewhere and nothing else lies in docs/img/; and the script's own code runs here on
fake data, tiny settings and no Chromium, so it cannot rot."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from pathlib import Path

import pytest
from conftest import ROOT

IMG = ROOT / "docs" / "img"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

pytestmark = pytest.mark.usefixtures("one_thread")


def pictures_script():
    spec = importlib.util.spec_from_file_location("pictures", ROOT / "scripts" / "pictures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def shown(page: Path) -> list[str]:
    """The images a Markdown page shows (`![...](path)` or `<img src=...>`), outside code."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
    return (re.findall(r"!\[[^\]]*\]\(([^)\s]+)", text)
            + re.findall(r"<img[^>]*\ssrc=[\"']([^\"']+)", text))


def picture_problems(pages: list[Path], img: Path) -> list[str]:
    """What is wrong between the pages, the pictures in `img` and its pictures.json."""
    manifest = img / "pictures.json"
    records = json.loads(manifest.read_text())["pictures"] if manifest.is_file() else {}
    problems, used = [], set()
    for page in pages:
        for link in shown(page):
            path = (page.parent / link).resolve()
            if path.parent != img.resolve():
                continue
            used.add(path.name)
            if path.name not in records:
                problems.append(f"{page.name} shows {link}, which {manifest.name} does not "
                                "record: make it with scripts/pictures.py")
            elif not path.is_file():
                problems.append(f"{page.name} shows {link}, which is not there")
            elif hashlib.sha256(path.read_bytes()).hexdigest() != records[path.name]["sha256"]:
                problems.append(f"{link} is not the picture scripts/pictures.py made (its "
                                "sha256 differs): run python scripts/pictures.py")
    for name in sorted(set(records) - used):
        problems.append(f"{manifest.name} records {name}, which no page shows")
    for path in sorted(img.iterdir()) if img.is_dir() else []:
        if path.name != manifest.name and path.name not in records:
            problems.append(f"{path.name} lies in {img.name}/ but {manifest.name} does not "
                            "record it")
    return problems


def test_every_picture_the_docs_show_is_the_one_the_script_made():
    assert picture_problems(PAGES, IMG) == []


def test_the_docs_show_pictures_from_real_runs():
    records = json.loads((IMG / "pictures.json").read_text())["pictures"]
    assert {"report.png", "latent_pca_ed4.png", "noise_examples_ed4.png"} <= set(records)
    readme = shown(ROOT / "README.md")
    assert len(readme) == 1 and readme[0].startswith("docs/img/"), readme
    assert len(shown(ROOT / "docs" / "tutorial.md")) >= 3
    for record in records.values():
        assert record["made_by"] == "scripts/pictures.py" and record["date"]
        assert record["settings"]["eds"] and record["runs"] and record["aetool"]
        for run in record["runs"].values():  # real MNIST, trained, not a smoke test
            assert run["dataset"] == "mnist" and run["test_mse"] < 0.05, run


def test_a_picture_edited_by_hand_or_not_recorded_is_found(tmp_path):
    img = tmp_path / "docs" / "img"
    img.mkdir(parents=True)
    (img / "a.png").write_bytes(b"made")
    (img / "b.png").write_bytes(b"by hand")
    (img / "stray.png").write_bytes(b"")
    records = {name: {"sha256": hashlib.sha256(b"made").hexdigest()}
               for name in ("a.png", "b.png", "unused.png")}
    (img / "pictures.json").write_text(json.dumps({"pictures": records}))
    page = tmp_path / "docs" / "page.md"
    page.write_text("![a](img/a.png) ![b](img/b.png) ![c](img/c.png) ![web](https://x/y.png)\n"
                    "```\n![in code](img/code.png)\n```\n")
    assert picture_problems([page], img) == [
        "img/b.png is not the picture scripts/pictures.py made (its sha256 differs): run "
        "python scripts/pictures.py",
        "page.md shows img/c.png, which pictures.json does not record: make it with "
        "scripts/pictures.py",
        "pictures.json records unused.png, which no page shows",
        "stray.png lies in img/ but pictures.json does not record it",
    ]


def test_the_script_makes_its_pictures_on_fake_data(tmp_path, fake_data_dir, capsys):
    """The script's whole path (study, copies, records) on the fake data, without Chromium:
    the old screenshot and its record are kept, a picture it no longer makes is removed."""
    out = tmp_path / "img"
    out.mkdir()
    (out / "report.png").write_bytes(b"old screenshot")
    (out / "latent_pca_ed99.png").write_bytes(b"from an older run")
    old = {"report.png": {"sha256": hashlib.sha256(b"old screenshot").hexdigest(), "date": "x"},
           "latent_pca_ed99.png": {"sha256": "0" * 64}}
    (out / "pictures.json").write_text(json.dumps({"pictures": old}))

    script = pictures_script()
    assert script.main(["--out", str(out), "--data", str(fake_data_dir), "--tiny",
                        "--no-chromium"]) == 0
    err = capsys.readouterr().err
    assert "Chromium is not here (or --no-chromium)" in err and "stay as they were" in err
    manifest = json.loads((out / "pictures.json").read_text())
    records = manifest["pictures"]
    assert manifest["command"] == "python scripts/pictures.py"
    assert sorted(records) == ["latent_pca_ed2.png", "noise_examples_ed2.png", "report.png"]
    assert sorted(p.name for p in out.iterdir()) == sorted([*records, "pictures.json"])
    assert records["report.png"] == old["report.png"]
    for name, record in records.items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == record["sha256"], name
        if name != "report.png":
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert record["settings"] == script.TINY and record["made_by"] == script.SCRIPT
            assert record["runs"]["ed2"]["dataset"] == "mnist"
            assert record["runs"]["ed2"]["test_mse"] > 0


def test_the_screenshot_is_made_with_headless_chromium_where_it_is_here(tmp_path):
    script = pictures_script()
    chromium = script.find_chromium()
    if chromium is None:
        pytest.skip("Chromium is not installed here")
    page = tmp_path / "page.html"
    page.write_text("<!doctype html><title>t</title><h1>aetool report</h1>")
    target = tmp_path / "out" / "shot.png"
    target.parent.mkdir()
    script.screenshot(chromium, page, target)
    png = target.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == script.WINDOW
    assert sorted(p.name for p in target.parent.iterdir()) == ["shot.png"]
