"""`aetool report`: one offline HTML page rendered from a small fabricated workspace."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import copy_runs
from typer.testing import CliRunner

from aetool import workspace as runs
from aetool.cli import app
from aetool.errors import AetoolError
from aetool.evaluate.embed import embed_run, scatter_png
from aetool.report.render import SECTIONS, render_report, template_source, write_report

ALL_SECTIONS = list(SECTIONS)
NOISES = [("original", "none", {}), ("N(0,0.1)", "gaussian", {"sigma": 0.1}),
          ("N(0,0.5)", "gaussian", {"sigma": 0.5}), ("occlusion", "occlusion", {}),
          ("uniform", "uniform", {})]


# --------------------------------------------------------------------------- fabrication


def noise_grid_png(images: torch.Tensor, noises: int, per_row: int = 8, seed: int = 0) -> bytes:
    """A clean / corrupted / reconstructed grid per noise, like `aetool corrupt` saves."""
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    tiles = images[:per_row].float() / 255
    rows = []
    for k in range(noises):
        noisy = (tiles + 0.3 * k * torch.randn(tiles.shape, generator=g)).clamp(0, 1)
        blurred = torch.nn.functional.avg_pool2d(tiles, 3, 1, 1)
        rows += [tiles, noisy, blurred]
    grid = torch.cat([torch.cat(list(r[:, 0]), dim=1) for r in rows], dim=0)
    buffer = io.BytesIO()
    Image.fromarray((grid.numpy() * 255).astype(np.uint8)).resize(
        (grid.shape[1] * 3, grid.shape[0] * 3), Image.Resampling.NEAREST
    ).save(buffer, format="PNG")
    return buffer.getvalue()


def write_noise_table(run_dir: Path, ed: int, images: torch.Tensor, labels=None) -> None:
    rows = [{"label": label, "noise": noise, "params": params, "mse": 0.02 + 0.01 * i / ed}
            for i, (label, noise, params) in enumerate(labels or NOISES)]
    runs.save_json(run_dir / "noise_table.json", {
        "run": run_dir.name, "ed": ed, "seed": 42, "test_images": 200, "rows": rows,
        "examples": "noise_examples.png",
    })
    (run_dir / "noise_examples.png").write_bytes(noise_grid_png(images, len(rows), seed=ed))


def write_search_results(root: Path, eds: list[int]) -> None:
    lrs, wds = [1e-2, 1e-3, 1e-4], [1e-3, 1e-4, 1e-5]
    results = {"grid": {"ed": eds, "lr": lrs, "weight_decay": wds, "folds": 3, "epochs": 20,
                        "batch_size": 500, "oscillation": "max |val[e+1] - val[e]| / val[e]"},
               "eds": {}, "complete": True, "missing": []}
    for ed in eds:
        settings = []
        for i, lr in enumerate(lrs):
            for j, wd in enumerate(wds):
                mean = 0.02 * (1 + i) * (1 + j / 4) * 4 / ed ** 0.5
                kept = not (i == 2 and j == 0)
                settings.append({
                    "lr": lr, "weight_decay": wd, "fold_val": [mean] * 3, "fold_train": [mean] * 3,
                    "val_mean": mean, "val_std": mean / 20, "train_mean": mean * 0.95,
                    "gap": mean * 0.05, "oscillation": 0.0, "kept": kept,
                    "reason": None if kept else "loss above 0.1 on a fold",
                    "curves": {"val": [[mean] * 4] * 3, "train": [[mean] * 4] * 3},
                })
        best = min((s for s in settings if s["kept"]), key=lambda s: s["val_mean"])
        results["eds"][str(ed)] = {"settings": settings, "best": {
            k: best[k] for k in ("lr", "weight_decay", "val_mean", "val_std")}}
    runs.save_json(root / "search" / "results.json", results)


def clone_run(source: Path, target: Path, ed: int, scale: float) -> None:
    """A copy of a run folder posing as another ED, its figures scaled (the report never loads
    the weights, so one tiny trained run can stand for several)."""
    shutil.copytree(source, target)
    runs.save_json(target / "config.json", {**runs.load_json(source / "config.json"), "ed": ed})
    history = runs.load_json(source / "history.json")
    runs.save_json(target / "history.json", [
        {**r, "train_loss": r["train_loss"] * scale, "val_loss": r["val_loss"] * scale}
        for r in history])
    metrics = runs.load_json(source / "metrics.json")
    runs.save_json(target / "metrics.json", {**metrics, "test_mse": metrics["test_mse"] * scale})
    if (source / "embedding.json").exists():
        summary = runs.load_json(source / "embedding.json")
        runs.save_json(target / "embedding.json", {
            **summary, "ed": ed, "silhouette": summary["silhouette"] * scale,
            "knn_accuracy": summary["knn_accuracy"] * scale})


@pytest.fixture(scope="module")
def trained(tmp_path_factory, trained_runs) -> Path:
    """A finished tiny ED=4 run (a copy of conftest's) and its clone as ED=32."""
    root = copy_runs(trained_runs, tmp_path_factory.mktemp("trained") / "runs", "ed4")
    clone_run(root / "ed4", root / "ed32", 32, 0.5)
    return root


@pytest.fixture(scope="module")
def full_workspace(tmp_path_factory, trained, fake_data) -> Path:
    """Runs with every file the other commands write: noise tables, embeddings, search."""
    root = tmp_path_factory.mktemp("full") / "runs"
    shutil.copytree(trained / "ed4", root / "ed4")
    embed_run(runs.open_run(root / "ed4"), fake_data)
    clone_run(root / "ed4", root / "ed32", 32, 0.5)
    # ed32 as `aetool fit --time 2m` leaves it: config.json says the budget its length fits
    config = runs.load_json(root / "ed32" / "config.json")
    runs.save_json(root / "ed32" / "config.json", {**config, "time_budget": 120.0})
    for run in runs.list_runs(root):
        write_noise_table(run.path, run.ed, fake_data.test_images)
    write_search_results(root, [4, 32])
    return root


def copy_workspace(source: Path, tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    shutil.copytree(source, root)
    return root


class PageParser(HTMLParser):
    """Collects the tags, attributes and text of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def parse(html: str) -> PageParser:
    parser = PageParser()
    parser.feed(html)
    return parser


def section_ids(html: str) -> list[str]:
    return [a["id"] for tag, a in parse(html).tags if tag == "section"]


# --------------------------------------------------------------------------- sections


def test_full_workspace_has_every_section(full_workspace, tmp_path):
    result = write_report(full_workspace, tmp_path / "report.html")
    html = result.path.read_text()
    assert result.sections == ALL_SECTIONS
    assert section_ids(html) == ALL_SECTIONS
    assert result.bytes == len(html.encode())
    for title in SECTIONS.values():
        assert title in html
    assert "★ best" in html and "✗ dropped: loss above 0.1 on a fold" in html
    assert "N(0,0.5)" in html and "occlusion" in html  # the noise table's rows
    assert "silhouette" in html and "k-NN accuracy" in html
    assert torch.__version__ in html  # environment


def test_default_output_is_report_html_in_the_workspace(full_workspace, tmp_path):
    root = copy_workspace(full_workspace, tmp_path)
    result = write_report(root)
    assert result.path == root / "report.html" and result.path.is_file()


def test_sections_follow_the_data(trained, tmp_path):
    """Plain finished runs: no search, noise or latent sections."""
    root = copy_workspace(trained, tmp_path)
    assert write_report(root).sections == ["runs", "loss", "test-mse", "environment"]
    write_noise_table(root / "ed4", 4, torch.zeros(8, 1, 28, 28, dtype=torch.uint8))
    assert "noise" in write_report(root).sections


def test_unfinished_run_shows_settings_and_loss_only(trained, tmp_path):
    root = tmp_path / "runs"
    shutil.copytree(trained / "ed4", root / "ed4")
    (root / "ed4" / "metrics.json").unlink()
    result = write_report(root)
    assert result.sections == ["runs", "loss"]
    assert "unfinished" in result.path.read_text()


def test_search_results_alone_make_a_report(tmp_path):
    root = tmp_path / "runs"
    write_search_results(root, [4, 8])
    result = write_report(root)
    assert result.sections == ["search"]
    html = result.path.read_text()
    assert "ED=4" in html and "ED=8" in html


def test_an_unfinished_search_marks_what_is_missing(tmp_path):
    root = tmp_path / "runs"
    write_search_results(root, [4])
    results = runs.load_json(root / "search" / "results.json")
    gone = results["eds"]["4"]["settings"].pop()
    results.update(complete=False, missing=[{"ed": 4, "lr": gone["lr"],
                                             "weight_decay": gone["weight_decay"]}])
    runs.save_json(root / "search" / "results.json", results)
    html = write_report(root).path.read_text()
    assert "not run" in html and "1 setting(s) have not been run" in html
    assert "batch_size" in html  # the search settings are listed


def test_sparse_files_still_render(trained, tmp_path):
    """Files with only some of their keys (older versions, hand-made) do not break the page."""
    root = tmp_path / "runs"
    shutil.copytree(trained / "ed4", root / "ed4")
    runs.save_json(root / "ed4" / "metrics.json", {"test_mse": 0.03, "environment": {}})
    runs.save_json(root / "ed4" / "embedding.json", {"silhouette": 0.1})
    runs.save_json(root / "ed4" / "noise_table.json", {"rows": [{"label": "original"}]})
    runs.save_json(root / "search" / "results.json", {"eds": {"4": {
        "settings": [{"lr": 0.01, "weight_decay": 0.0}], "best": {"lr": 0.01}}}})
    result = write_report(root)
    # every section its files make: not the time budget, which no run here trained to
    assert result.sections == [s for s in ALL_SECTIONS if s != "time-budget"]


def test_noise_rows_are_matched_across_runs_by_their_spec_not_their_label(trained, tmp_path):
    """Two noises with one display label stay two rows, and a noise whose label changed
    between runs (another version of its plugin) stays one row."""
    from aetool.report.render import collect_report

    root = copy_workspace(trained, tmp_path)
    images = torch.zeros(8, 1, 28, 28, dtype=torch.uint8)
    write_noise_table(root / "ed4", 4, images, [("N(0,0.1)", "gaussian", {"sigma": 0.1}),
                                                ("N(0,0.1)", "gaussian", {"sigma": 0.1000001})])
    write_noise_table(root / "ed32", 32, images, [("gaussian(sigma=0.1)", "gaussian",
                                                   {"sigma": 0.1})])
    rows = collect_report(root)["noise"]["rows"]
    assert [[c["mse"] for c in r["cells"]] for r in rows] == [[0.02, 0.02], [0.02 + 0.01 / 4, None]]
    assert [r["spec"] for r in rows] == ["gaussian:sigma=0.1", "gaussian:sigma=0.1000001"]
    assert rows[0]["label"] != rows[1]["label"]  # shown apart on the page


def test_empty_workspace_is_one_clear_error(tmp_path):
    with pytest.raises(AetoolError, match="Nothing to report in"):
        write_report(tmp_path / "runs")


# --------------------------------------------------------------------------- safety and form


def test_script_names_are_escaped(trained, tmp_path):
    root = tmp_path / "runs"
    run_dir = root / ("<script>alert(1)" if os.name != "nt" else "script")
    shutil.copytree(trained / "ed4", run_dir)
    labels = [("<script>alert(2)</script>", "<b>evil</b>", {})]
    write_noise_table(run_dir, 4, torch.zeros(8, 1, 28, 28, dtype=torch.uint8), labels)
    html = write_report(root).path.read_text()
    assert "<script" not in html.lower()
    assert "<b>evil" not in html
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in html
    assert os.name == "nt" or "&lt;script&gt;alert(1)" in html


# What a page must not hold to open offline with nothing fetched and nothing run: elements that
# run code, load a document or resource, or send data; attributes that load a resource (only a
# PNG data URI is allowed as a source, only "#fragment" as a link); CSS that loads anything.
ACTIVE_TAGS = {"script", "link", "iframe", "frame", "frameset", "object", "embed", "applet",
               "base", "form", "portal", "audio", "video", "source", "track", "use", "image",
               "feimage", "foreignobject"}
URL_ATTRIBUTES = {"href", "src", "srcset", "imagesrcset", "action", "formaction", "poster",
                  "data", "background", "cite", "longdesc", "lowsrc", "dynsrc", "ping",
                  "manifest", "codebase", "archive", "xlink:href", "profile", "icon"}
CSS_FETCH = re.compile(r"@import|url\s*\(|image-set\s*\(|@font-face|expression\s*\(|"
                       r"-moz-binding|behavior\s*:|src\s*\(", re.IGNORECASE)
CSS_ESCAPE = re.compile(r"\\([0-9a-fA-F]{1,6})\s?|\\(.)")


def css_unescaped(css: str) -> str:
    """CSS with its escapes decoded (`@\\69mport` is `@import`) and comments removed."""
    css = CSS_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)) if m.group(1) else m.group(2), css)
    return re.sub(r"/\*.*?\*/", "", css, flags=re.DOTALL)


class OfflineScan(HTMLParser):
    """Everything in a page that would fetch from anywhere or run JavaScript."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.problems: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        self._check(tag, attrs)
        self._in_style = tag == "style"

    def handle_startendtag(self, tag, attrs):
        self._check(tag, attrs)

    def handle_endtag(self, tag):
        if tag == "style":
            self._in_style = False

    def handle_data(self, data):
        if self._in_style and CSS_FETCH.search(css_unescaped(data)):
            self.problems.append(f"<style> loads something: {data.strip()[:80]!r}")

    def _check(self, tag, attrs):
        if tag in ACTIVE_TAGS:
            self.problems.append(f"<{tag}> element")
        for name, value in attrs:
            value = (value or "").strip()
            if name.startswith("on"):
                self.problems.append(f"<{tag} {name}=...>: an event handler (JavaScript)")
            elif name == "style" and CSS_FETCH.search(css_unescaped(value)):
                self.problems.append(f"<{tag} style={value[:60]!r}> loads something")
            elif name == "http-equiv" and value.lower() != "content-type":
                self.problems.append(f"<meta http-equiv={value!r}> (refresh or the like)")
            elif name in URL_ATTRIBUTES or name.endswith(("src", "href")):
                allowed = ("#",) if name.endswith("href") else ("data:image/png;base64,",)
                if name.endswith("srcset") or not value.startswith(allowed):
                    self.problems.append(f"<{tag} {name}={value[:60]!r}>: a fetch")
            if "javascript:" in re.sub(r"\s", "", value.lower()):
                self.problems.append(f"<{tag} {name}=...>: a javascript: URL")


def offline_problems(html: str) -> list[str]:
    scan = OfflineScan()
    scan.feed(html)
    scan.close()
    return scan.problems + [f"an absolute URL: {m.group(0)}" for m in
                            re.finditer(r"\b(?:https?|ftp|wss?)://[^\s\"'<>)]*", html)]


@pytest.mark.parametrize("snippet", [
    '<p onclick="alert(1)">x</p>',
    "<body ONLOAD=go()>",
    '<img src="data:image/png;base64,AAAA" srcset="//cdn.example/a.png 2x" alt="a">',
    '<img src="data:image/png;base64,AAAA" alt="a"><picture><source srcset="a.webp"></picture>',
    '<style>@import "theme.css";</style>',
    '<style>@\\69mport "theme.css";</style>',
    '<style>body { background: URL(bg.png) }</style>',
    '<div style="background-image: url(//cdn.example/bg.png)"></div>',
    '<meta http-equiv="refresh" content="0; url=elsewhere.html">',
    '<a href="//evil.example/page">x</a>',
    '<img src="//evil.example/x.png" alt="x">',
    '<img src="x.png" alt="x">',
    '<a href="javascript:alert(1)">x</a>',
    "<script>alert(1)</script>",
    '<svg><use href="sprite.svg#a"/></svg>',
    '<svg><image xlink:href="pic.png"/></svg>',
    '<link rel="stylesheet" href="style.css">',
    '<form action="/send"><button>go</button></form>',
    '<button formaction="/send">go</button>',
    '<video poster="p.png"></video>',
    '<iframe srcdoc="&lt;b&gt;"></iframe>',
    "<p>see http://example.org</p>",
])
def test_offline_scan_catches_each_way_to_fetch_or_run(snippet):
    assert offline_problems(f"<!DOCTYPE html><html><body>{snippet}</body></html>"), snippet


def test_offline_scan_passes_a_clean_page():
    clean = ('<!DOCTYPE html><html><head><meta charset="utf-8"><style>td { color: red }'
             ' .bar { width: 50% }</style></head><body><a href="#noise">noise</a>'
             '<img src="data:image/png;base64,AAAA" alt="a"><span style="width: 3.5%">'
             "</span><p>once upon a time // not a link; online, onward</p></body></html>")
    assert offline_problems(clean) == []


def test_no_external_urls_and_every_image_has_alt(full_workspace, tmp_path):
    html = write_report(full_workspace, tmp_path / "r.html").path.read_text()
    assert offline_problems(html) == []
    page = parse(html)
    images = [a for t, a in page.tags if t == "img"]
    assert len(images) >= 5  # loss plot, 2 noise grids, 2 latent plots
    assert all(a.get("alt", "").strip() for a in images)
    tags = [t for t, _ in page.tags]
    assert tags.count("table") >= 5 and tags.count("th") > tags.count("table")
    assert "prefers-color-scheme: dark" in html


def test_a_four_ed_report_stays_small(trained, fake_data, tmp_path):
    """Four runs with 2,000-epoch histories, full-size latent plots (10,000 points) and
    large example grids (one of them 9 MB of noise): the page stays well under 5 MB."""
    from PIL import Image

    root = tmp_path / "runs"
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 10_000)
    points = rng.normal(size=(10_000, 2)) + labels[:, None] * 0.3
    latent_png = scatter_png(points, labels, tuple("0123456789"), "ED=4")
    big = fake_data.test_images[:32]
    grid_png = noise_grid_png(big, 8, per_row=16)
    worst_png = io.BytesIO()  # pure colour noise, 2000 px wide: PNG cannot compress it
    Image.fromarray(rng.integers(0, 256, (1500, 2000, 3), dtype=np.uint8)).save(worst_png, "PNG")
    history = [{"epoch": e + 1, "train_loss": 0.05 / (e + 1) ** 0.3,
                "val_loss": 0.06 / (e + 1) ** 0.3, "lr": 0.01, "seconds": 1.0}
               for e in range(2000)]
    for ed in (4, 8, 16, 32):
        run_dir = root / f"ed{ed}"
        clone_run(trained / "ed4", run_dir, ed, 4 / ed)
        runs.save_json(run_dir / "config.json",  # trained to a budget: the page has its plot
                       {**runs.load_json(run_dir / "config.json"), "time_budget": 60.0 * ed})
        runs.save_json(run_dir / "history.json", history)
        write_noise_table(run_dir, ed, big[:1])
        (run_dir / "noise_examples.png").write_bytes(
            grid_png if ed < 32 else worst_png.getvalue())
        (run_dir / "latent_pca.png").write_bytes(latent_png)
        runs.save_json(run_dir / "embedding.json", {
            "method": "pca", "explained_variance": [0.4, 0.2], "silhouette": 0.1,
            "knn_accuracy": 0.9, "plot": "latent_pca.png"})
    write_search_results(root, [4, 8, 16, 32])
    result = write_report(root)
    assert result.sections == ALL_SECTIONS
    assert len(grid_png) > 300_000 and len(worst_png.getvalue()) > 8_000_000
    assert result.bytes < 2_500_000, f"{result.bytes / 1e6:.2f} MB"


def test_templates_load_from_the_package_or_the_repository(monkeypatch):
    assert "<!DOCTYPE html>" in template_source("report.html.j2")
    assert "prefers-color-scheme" in template_source("report.css")

    def missing(name):
        raise ModuleNotFoundError(name)

    monkeypatch.setattr("aetool.report.render.resources.files", missing)
    assert "<!DOCTYPE html>" in template_source("report.html.j2")
    assert template_source("no-such-template.j2") is None


def test_render_report_returns_html(full_workspace):
    html = render_report(full_workspace)
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")


# --------------------------------------------------------------------------- command line


def test_cli_writes_the_report_and_prints_its_path(full_workspace, tmp_path):
    out = tmp_path / "out" / "page.html"
    result = CliRunner().invoke(app, ["report", "--runs", str(full_workspace), "--output",
                                      str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == str(out)
    assert out.is_file()


def test_cli_json(full_workspace, tmp_path):
    out = tmp_path / "page.html"
    result = CliRunner().invoke(app, ["report", "--runs", str(full_workspace), "-o", str(out),
                                      "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary == {"path": str(out), "sections": ALL_SECTIONS, "bytes": out.stat().st_size,
                       "created": None, "unreadable": []}


def test_cli_empty_workspace_exits_1_with_one_sentence(tmp_path):
    result = CliRunner().invoke(app, ["report", "--runs", str(tmp_path / "nothing")])
    assert result.exit_code == 1
    assert "Error: Nothing to report in" in result.output
    assert "Traceback" not in result.output


# --------------------------------------------------------------------------- a real browser


def find_chromium() -> str | None:
    # Debian's /usr/lib/chromium/chromium is the browser itself; /usr/bin/chromium is a shell
    # wrapper that only adds desktop settings (and fails where /etc/chromium.d is missing).
    for candidate in ("/usr/lib/chromium/chromium", "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser"), shutil.which("google-chrome")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def browser_unavailable(reason: str) -> None:
    """Skip, except in CI (CI=true), where scripts/test.sh installs Chromium: there a browser
    that is missing, does not start or hangs fails the test, unless AETOOL_TEST_NO_BROWSER=1
    says knowingly that this CI has none."""
    if IN_CI and not os.environ.get("AETOOL_TEST_NO_BROWSER"):
        pytest.fail(f"{reason}; CI=true, so the browser check must run (set "
                    "AETOOL_TEST_NO_BROWSER=1 to skip it on purpose)", pytrace=False)
    pytest.skip(reason)


def chromium_dump(chromium: str, page: Path, profile: Path) -> subprocess.CompletedProcess:
    """Chromium's DOM of `page` after loading, with its console and network log on stderr.
    Every host name resolves to nothing, so any fetch fails loudly (net::ERR_...) instead of
    reaching a network."""
    command = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run",
        "--disable-dev-shm-usage", f"--user-data-dir={profile}",
        "--host-resolver-rules=MAP * ~NOTFOUND", "--enable-logging=stderr", "--v=0",
        "--dump-dom", page.resolve().as_uri(),
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired:
        browser_unavailable("Chromium did not finish within 90 s on this machine")
    if done.returncode != 0 and not done.stdout:
        browser_unavailable(f"Chromium could not start here: {done.stderr.strip()[-300:]}")
    return done


BROWSER_PROBLEM = re.compile(r"Uncaught|CONSOLE|console\.error|Refused to|net::ERR")


def test_page_renders_in_headless_chromium(full_workspace, tmp_path):
    chromium = find_chromium()
    if chromium is None:
        browser_unavailable(
            "Chromium is not installed (scripts/test.sh installs Debian's `chromium`)")
    page = write_report(full_workspace, tmp_path / "report.html").path
    done = chromium_dump(chromium, page, tmp_path / "profile")
    dom = done.stdout
    assert "<title>aetool report</title>" in dom
    assert all(f'id="{s}"' in dom for s in ALL_SECTIONS)
    console = [line for line in done.stderr.splitlines() if BROWSER_PROBLEM.search(line)]
    assert not console, "\n".join(console)


def test_the_loss_plot_marks_whole_epochs_only(monkeypatch):
    """A short run's loss plot has ticks at whole epochs (1, 2, 3), never at 1.5 or 2.5."""
    from matplotlib.figure import Figure

    from aetool.report.render import loss_plot

    ticks = []
    real_savefig = Figure.savefig

    def spy(fig, *args, **kwargs):
        ax = fig.axes[0]
        low, high = ax.get_xlim()
        ticks.extend(t for t in ax.get_xticks() if low <= t <= high)
        return real_savefig(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", spy)
    history = [{"epoch": e, "train_loss": 0.05 / e, "val_loss": 0.06 / e} for e in range(1, 6)]
    assert loss_plot([("ED=4", history, 5)]).startswith("data:image/png;base64,")
    assert ticks and all(float(t).is_integer() for t in ticks), ticks
