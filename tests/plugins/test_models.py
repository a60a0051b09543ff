"""Architectures as plugins: the hook and its contract, specs, every command with `--model`,
every training mode against eager for every built-in model, the example `mlp` plugin end to
end, bad input, and the model guide (docs/) in step with the code."""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import json
import re
import sys
import warnings

import pytest
import torch
from conftest import ROOT
from torch import nn
from typer.testing import CliRunner

from aetool import models, plugins
from aetool import workspace as runs
from aetool.cli import app
from aetool.config import preset_config
from aetool.errors import AetoolError, SettingError
from aetool.models import Model, build_model, check_contract, parse_model_spec
from aetool.plugins.hookspecs import hookimpl
from aetool.plugins.params import Param
from aetool.train import fast
from aetool.train.loop import fit_run
from aetool.train.step import make_generator

MODELS_PAGE = ROOT / "docs" / "models.md"
PLUGINS_PAGE = ROOT / "docs" / "plugins.md"
runner = CliRunner()
BUILT_IN = ["course", "wide:width=8,hidden=64,depth=2"]  # small widths keep these fast


def plain(result) -> str:
    return " ".join("".join(" " if c in "│╭╮╰╯─" else c for c in result.output).split())


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


class Plugin:
    """A throwaway plugin registering `models`, for the length of a `with` block."""

    def __init__(self, *found: Model, name: str = "test-models") -> None:
        self.found, self.name = found, name

    @hookimpl
    def register_models(self, register):
        for model in self.found:
            register(model)

    def __enter__(self) -> Plugin:
        plugins.load_plugins()
        plugins.pm.register(self, name=self.name)
        return self

    def __exit__(self, *exc) -> None:
        plugins.pm.unregister(self)


def load_mlp_plugin():
    spec = importlib.util.spec_from_file_location(
        "aetool_mlp", ROOT / "plugins" / "aetool-mlp" / "aetool_mlp.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def mlp():
    module = load_mlp_plugin()
    plugins.load_plugins()
    plugins.pm.register(module, name="aetool_mlp")
    yield module
    plugins.pm.unregister(module)


# --------------------------------------------------------------------------- the registry


def test_built_ins_register_like_plugins():
    found = models.registered_models()
    assert {"course", "wide"} <= set(found)
    assert found["course"].plugin == "aetool.plugins.default.course"
    assert found["wide"].plugin == "aetool.plugins.default.wide"
    entry_points = (ROOT / "pyproject.toml").read_text()
    for name in ("course", "wide"):
        assert f'{name} = "aetool.plugins.default.{name}"' in entry_points


def test_specs_spell_out_every_parameter():
    assert parse_model_spec(None).spec == "course"
    assert parse_model_spec("wide").spec == "wide:width=16,hidden=512,groups=8,depth=1"
    assert (parse_model_spec("wide:hidden=64,width=8").spec
            == "wide:width=8,hidden=64,groups=8,depth=1")
    for bad, needle in (("nope", "Unknown model 'nope'"), ("wide:colour=3", "no parameter"),
                        ("wide:width=0", "at least 1"), ("wide:width=x", "whole number"),
                        ("wide:width=8,width=9", "twice")):
        with pytest.raises(SettingError, match=needle) as caught:
            parse_model_spec(bad)
        assert caught.value.field == "model"


def test_wide_depth_adds_hidden_layers_each_side_of_the_code():
    """`depth` hidden layers next to the code on each side (the extra ones residual, one
    Linear each), same contract."""
    def linears(spec):
        module = parse_model_spec(spec).build(4)
        return [sum(isinstance(m, torch.nn.Linear) for m in part.modules())
                for part in (module.encoder, module.decoder_lin)]

    assert linears("wide:width=8,hidden=64") == [2, 2]
    assert linears("wide:width=8,hidden=64,depth=3") == [4, 4]
    spec = parse_model_spec("wide:width=8,hidden=64,depth=3")
    check_contract(spec.build(4), 4, spec)  # encode (N, 4), decode in [0, 1]
    with pytest.raises(SettingError, match="at most 8"):
        parse_model_spec("wide:depth=9")


@torch.no_grad()
def test_a_deep_wide_passes_its_signal_through_at_initialisation():
    """Plain Linear + SiLU stacks of 4 and more collapsed to the mean image at ED 4: at
    initialisation their code hardly varied between images (10x less per two layers). The
    residual extra layers keep the spread of the code and of the decoder's features close to
    depth 1's, at depth 8 too."""
    images = torch.rand(256, 1, 28, 28, generator=torch.Generator().manual_seed(0))

    def spread(depth):
        torch.manual_seed(0)
        module = parse_model_spec(f"wide:width=8,hidden=64,depth={depth}").build(4)
        code = module.encode(images)
        return float(code.std(0).mean()), float(module.decoder_lin(code).std(0).mean())

    shallow = spread(1)
    for depth in (3, 8):
        for deep, base in zip(spread(depth), shallow, strict=True):
            assert base / 3 < deep < base * 3, (depth, deep, base)


def test_course_is_the_report_architecture_and_old_runs_read_as_course(seed_checkpoints):
    from aetool.models import Autoencoder, load_model

    built = build_model("course", 4)
    assert isinstance(built, Autoencoder)
    seed = load_model(seed_checkpoints / "net_params_4.pth")
    assert [k for k in built.state_dict()] == [k for k in seed.state_dict()]
    assert runs.FitConfig.from_dict({"ed": 4}).model == "course"


class WrongShapes(nn.Module):
    def encode(self, x):
        return x.flatten(1)[:, :3]

    def decode(self, z):
        return torch.zeros(z.shape[0], 1, 28, 28)

    def forward(self, x):
        return self.decode(self.encode(x))


class OutOfRange(WrongShapes):
    def encode(self, x):
        return x.flatten(1)[:, :4]

    def decode(self, z):
        return torch.full((z.shape[0], 1, 28, 28), 2.0)


@pytest.mark.parametrize("module, needle", [
    (WrongShapes, "encode returned shape (2, 3), not (2, 4)"),
    (OutOfRange, "decode returned values outside [0, 1]"),
])
def test_the_contract_is_checked_before_anything_is_written(module, needle, tmp_path,
                                                            fake_data_dir):
    with Plugin(Model("broken", "breaks the contract", lambda ed: module())):
        result = invoke("fit", "--ed", "4", "--model", "broken", "--max-epochs", "1",
                        "--device", "cpu", "--data-dir", fake_data_dir, "--runs", tmp_path / "ws")
    assert result.exit_code == 2, result.output
    assert needle in plain(result) and "'--model'" in plain(result)
    assert "test-models" in plain(result)  # the plugin is named
    assert not (tmp_path / "ws").exists() or not any((tmp_path / "ws").iterdir())


def test_a_taken_name_or_a_broken_plugin_warns_and_the_rest_works():
    def explode(register):
        raise RuntimeError("boom")

    class Broken:
        register_models = hookimpl(staticmethod(explode))

    with Plugin(Model("course", "an impostor", lambda ed: None)), warnings.catch_warnings(
            record=True) as caught:
        warnings.simplefilter("always")
        plugins.pm.register(Broken(), name="broken-plugin")
        try:
            found = models.registered_models()
        finally:
            plugins.pm.unregister(name="broken-plugin")
    messages = [str(w.message) for w in caught]
    assert any("broken-plugin failed in register_models" in m for m in messages)
    assert found["aetool/course"].plugin == "aetool.plugins.default.course"
    assert found["test-models/course"].plugin == "test-models"
    with pytest.raises(SettingError, match="both aetool and test-models"):
        found["course"]
    assert "wide" in found


# --------------------------------------------------------------------------- commands


def test_models_lists_every_model_with_its_weights(mlp):
    result = invoke("models", "--json")
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert {"course", "wide", "mlp"} <= set(rows)
    for name, row in rows.items():
        expected = sum(p.numel() for p in build_model(name, 4).parameters())
        assert row["parameters_at_ed4"] == expected, name
    assert rows["mlp"]["plugin"] == "aetool_mlp"
    assert [p["name"] for p in rows["wide"]["params"]] == ["width", "hidden", "groups", "depth"]
    table = invoke("models")
    assert table.exit_code == 0 and "49,541" in table.output


def test_the_readme_table_matches_the_registry():
    section = MODELS_PAGE.read_text()
    rows = re.findall(r"^\| `(\w+)` \|\s*([^|]*?)\s*\| ([\d,]+) \|", section,
                      flags=re.MULTILINE)
    assert [r[0] for r in rows] == ["course", "wide"]
    for name, params, weights in rows:
        spec = parse_model_spec(name)
        written = dict(re.findall(r"`(\w+)=([^`]+)`", params))
        assert written == {k: str(v) for k, v in spec.params.items()}, name
        assert int(weights.replace(",", "")) == sum(
            p.numel() for p in spec.build(4).parameters()), name


def test_resume_refuses_another_model(tmp_path, fake_data_dir):
    workspace = tmp_path / "ws"
    config = preset_config(ed=4, max_epochs=3, batch_size=100, val_size=100, device="cpu")

    def stop(record, cfg):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit_run(config, workspace, "r", data_dir=fake_data_dir, on_epoch=stop)
    before = {p.name: p.read_bytes() for p in (workspace / "r").iterdir()}
    result = invoke("fit", "--name", "r", "--resume", "--model", "wide:width=8",
                    "--data-dir", fake_data_dir, "--runs", workspace)
    assert result.exit_code == 1, result.output
    assert "differ in model" in plain(result)
    assert {p.name: p.read_bytes() for p in (workspace / "r").iterdir()} == before


def test_a_checkpoint_of_another_model_is_one_sentence(tmp_path, fake_data_dir):
    workspace = tmp_path / "ws"
    common = ["--max-epochs", "1", "--batch-size", "100", "--val-size", "100", "--device", "cpu",
              "--data-dir", fake_data_dir, "--runs", workspace]
    assert invoke("fit", "--ed", "4", *common).exit_code == 0
    config = json.loads((workspace / "ed4" / runs.CONFIG).read_text())
    config["model"] = "wide:width=8,hidden=64,groups=8,depth=1"
    (workspace / "ed4" / runs.CONFIG).write_text(json.dumps(config))
    result = invoke("corrupt", "--noise", "original", "--device", "cpu",
                    "--data-dir", fake_data_dir, "--runs", workspace)
    assert result.exit_code == 1, result.output
    assert "the weights of a 'wide:width=8,hidden=64,groups=8,depth=1' model" in plain(
        result)
    assert "Traceback" not in result.output


def test_the_example_plugin_end_to_end(mlp, tmp_path, fake_data_dir):
    """`mlp` and `wide` runs trained, corrupted, embedded and reported beside a course run."""
    workspace = tmp_path / "ws"
    common = ["--ed", "4", "--max-epochs", "2", "--batch-size", "100", "--val-size", "100",
              "--device", "cpu", "--data-dir", fake_data_dir, "--runs", workspace]
    for name, model in (("course", "course"), ("mlp", "mlp:hidden=64"),
                        ("wide", "wide:width=8,hidden=64")):
        result = invoke("fit", *common, "--name", name, "--model", model, "--json")
        assert result.exit_code == 0, result.output
        saved = json.loads((workspace / name / runs.CONFIG).read_text())
        assert saved["model"] == parse_model_spec(model).spec
        metrics = json.loads((workspace / name / runs.METRICS).read_text())
        assert metrics["parameters"] == sum(p.numel() for p in build_model(model, 4).parameters())
    for command in (["corrupt", "--noise", "original", "--noise", "occlusion"], ["embed"]):
        result = invoke(*command, "--device", "cpu", "--data-dir", fake_data_dir,
                        "--runs", workspace)
        assert result.exit_code == 0, result.output
    tables = {name: json.loads((workspace / name / runs.NOISE_TABLE).read_text())
              for name in ("course", "mlp", "wide")}
    assert len({t["rows"][0]["mse"] for t in tables.values()}) == 3  # three different models
    result = invoke("report", "--runs", workspace)
    assert result.exit_code == 0, result.output
    html = (workspace / runs.REPORT_FILE).read_text()
    for label in ("ED=4 (course)", "ED=4 mlp (mlp)", "ED=4 wide (wide)"):
        assert label in html
    assert "mlp:hidden=64,layers=2" in html and f"{tables['mlp']['rows'][0]['mse']:.6f}" in html


def test_search_trains_any_model_batched(tmp_path, fake_data_dir):
    from aetool.search.grid import SearchConfig, run_search
    from aetool.train.batched import unbatchable

    assert unbatchable(preset_config(model="wide:width=8,hidden=64"), "cpu") is None
    trained = []
    config = SearchConfig(eds=[4], lrs=[1e-2, 1e-3], weight_decays=[1e-5], folds=2, epochs=1,
                          batch_size=100, val_size=100, limit=200, device="cpu", parallel=4,
                          max_loss=1.0, max_oscillation=10.0, model="wide:width=8,hidden=64")
    results = run_search(config, tmp_path / "ws", data_dir=fake_data_dir,
                         on_train=lambda jobs: trained.append(len(jobs)))
    assert trained == [4]  # both settings x both folds in one vmapped group
    assert results["grid"]["model"] == "wide:width=8,hidden=64,groups=8,depth=1"
    with pytest.raises(AetoolError, match="trained 'wide:width=8,.*,depth=1', not 'co"):
        from aetool.train.loop import run_config

        run_config(runs_root=tmp_path / "ws", from_search=True, ed=4)
    assert run_config(runs_root=tmp_path / "ws", from_search=True, ed=4,
                      model="wide:width=8,hidden=64").lr in (1e-2, 1e-3)


class DataDependent(nn.Module):
    """Branches in Python on a value of its input: vmap cannot batch that."""

    def __init__(self, ed: int) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(784, ed))
        self.decoder = nn.Sequential(nn.Linear(ed, 784))

    def encode(self, x):
        if x.mean() > 2:  # never true for images in [0, 1], but vmap cannot know that
            x = x * 0
        return self.encoder(x)

    def decode(self, z):
        return torch.sigmoid(self.decoder(z)).view(-1, 1, 28, 28)

    def forward(self, x):
        return self.decode(self.encode(x))


def test_a_model_that_cannot_be_batched_trains_one_at_a_time(fake_data):
    from aetool.train.batched import TrainJob, train_models

    with Plugin(Model("branchy", "data-dependent control flow", DataDependent)):
        config = preset_config(model="branchy", batch_size=50, max_epochs=1, device="cpu")
        index = torch.arange(200)
        jobs = [TrainJob(dataclasses.replace(config, lr=lr), index[:150], index[150:])
                for lr in (1e-2, 1e-3)]
        with pytest.warns(RuntimeWarning, match="cannot be trained batched"):
            curves = train_models(jobs, fake_data.train_images[:200], 1)
    assert len(curves) == 2 and curves[0].val != curves[1].val


# --------------------------------------------------------------------------- speed paths

# Every mode against eager, for every built-in model. The bounds are test_fast's, argued
# there: the fast paths only sum in other orders, so a few steps agree to ~1e-7 in loss.
LOSS_RTOL = 2e-6


def epochs_in(mode: str, spec: str, images: torch.Tensor, epochs: int = 2):
    torch.manual_seed(0)
    model = build_model(spec, 4)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-5)
    run_epoch = fast.make_train_epoch(model, optimizer, "cpu", mode)
    shuffle = torch.Generator().manual_seed(0)
    noise_generator = make_generator(torch.device("cpu"), 1)
    losses = [run_epoch(model, optimizer, images, 50, shuffle, None, noise_generator)
              for _ in range(epochs)]
    return losses, run_epoch.mode


@pytest.mark.parametrize("spec", BUILT_IN)
@pytest.mark.parametrize("mode", ["tuned", "compile"])
def test_every_mode_gives_the_eager_losses_for_every_model(spec, mode, fake_data):
    images = fake_data.train_images[:200]
    eager, _ = epochs_in("eager", spec, images)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        losses, ran = epochs_in(mode, spec, images)
    if ran != mode:  # compiling can fail where no compiler is installed: say so, never pass
        reason = "; ".join(str(w.message) for w in caught)
        pytest.skip(f"{mode} fell back to {ran}: {reason}")
    assert losses == pytest.approx(eager, rel=LOSS_RTOL)


# --------------------------------------------------------------------------- the guide


def model_paragraph() -> str:
    text = PLUGINS_PAGE.read_text()
    start = text.index("A `Model` (from `aetool.models`) has")
    return " ".join(text[start:text.index("\n\n", start)].split())


def test_the_guide_lists_the_model_fields_and_the_contract():
    paragraph = model_paragraph()
    fields = [f.name for f in dataclasses.fields(Model) if f.name != "plugin"]
    mentioned = [m for m in re.findall(r"`(\w+)", paragraph) if m in fields]
    assert list(dict.fromkeys(mentioned)) == fields
    assert "`build(ed, **params) -> Module`" in paragraph
    (written,) = re.findall(r"`Param\(([^)]*)\)`", paragraph)
    code = [p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default!r}"
            for p in inspect.signature(Param).parameters.values()]
    assert [a.strip() for a in written.split(",")] == code
    for method in ("encode(x) -> Tensor", "decode(z) -> Tensor", "forward(x) -> Tensor"):
        assert f"`{method}`" in paragraph
        assert callable(getattr(nn.Module, method.split("(")[0], None)) or method.startswith(
            ("encode", "decode"))
    assert "(N, ed)" in paragraph and "(N, 1, 28, 28)" in paragraph


def test_the_guide_s_example_plugin_works(tmp_path):
    text = PLUGINS_PAGE.read_text()
    start = text.index("A minimal plugin, `aetool_tiny.py`:")
    code = re.search(r"```python\n(.*?)```", text[start:], flags=re.DOTALL).group(1)
    path = tmp_path / "aetool_tiny.py"
    path.write_text(code)
    sys.path.insert(0, str(tmp_path))
    try:
        import aetool_tiny

        plugins.load_plugins()
        plugins.pm.register(aetool_tiny, name="aetool_tiny")
        try:
            module = build_model("tiny:hidden=32", 4)
            assert module(torch.rand(3, 1, 28, 28)).shape == (3, 1, 28, 28)
            # The guide's "Checking your plugin" tests, run as a plugin author's suite would.
            start = text.index("The same checks run from your own test suite")
            checks = re.search(r"```python\n(.*?)```", text[start:], flags=re.DOTALL).group(1)
            suite: dict = {}
            exec(compile(checks, "docs/plugins.md", "exec"), suite)
            tests = [f for name, f in suite.items() if name.startswith("test_")]
            assert len(tests) == 2
            for test in tests:
                test()
        finally:
            plugins.pm.unregister(aetool_tiny)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("aetool_tiny", None)


def test_the_example_package_is_wired_as_the_guide_says():
    package = ROOT / "plugins" / "aetool-mlp"
    assert 'mlp = "aetool_mlp"' in (package / "pyproject.toml").read_text()
    assert "-e plugins/aetool-mlp" in (ROOT / "scripts" / "test.sh").read_text()
    module = load_mlp_plugin()
    with Plugin(name="unused"):
        pass
    with pytest.raises(AetoolError):  # its parameters are checked like any model's
        plugins.pm.register(module, name="aetool_mlp")
        try:
            parse_model_spec("mlp:layers=9")
        finally:
            plugins.pm.unregister(module)


def test_a_model_name_two_packages_register_needs_its_package(tmp_path, fake_data_dir):
    """Issue 21: `course` from a second package is refused unqualified (exit 2, before
    anything is written); `aetool/course` trains, and the run reads back with that name."""
    from aetool.models import Autoencoder

    common = ["--ed", "4", "--max-epochs", "1", "--batch-size", "100", "--val-size", "100",
              "--device", "cpu", "--data-dir", fake_data_dir, "--runs", tmp_path / "ws"]
    with Plugin(Model("course", "a copy", Autoencoder)):
        refused = invoke("fit", *common, "--model", "course")
        assert refused.exit_code == 2, refused.output
        assert "'aetool/course' or 'test-models/course'" in " ".join(refused.output.split())
        assert not (tmp_path / "ws").exists()
        trained = invoke("fit", *common, "--model", "aetool/course")
        assert trained.exit_code == 0, trained.output
        saved = json.loads((tmp_path / "ws" / "ed4" / "config.json").read_text())
        assert saved["model"] == "aetool/course"
        again = invoke("corrupt", "--run", "ed4", "--noise", "original", "--device", "cpu",
                       "--data-dir", fake_data_dir, "--runs", tmp_path / "ws")
        assert again.exit_code == 0, again.output


def test_the_model_s_spec_is_shown_in_fit_corrupt_and_search(tmp_path, fake_data_dir):
    """Issue 21: a plugin author sees which model a table is about."""
    wide = CliRunner(env={"COLUMNS": "250"})
    spec = "wide:width=8,hidden=32,groups=1,depth=1"
    common = ["--device", "cpu", "--data-dir", str(fake_data_dir), "--runs", str(tmp_path / "ws")]
    fitted = wide.invoke(app, ["fit", "--ed", "4", "--max-epochs", "1", "--batch-size", "100",
                               "--model", spec, *common])
    assert fitted.exit_code == 0, fitted.output
    assert spec in fitted.output
    corrupted = wide.invoke(app, ["corrupt", "--noise", "original", *common])
    assert corrupted.exit_code == 0 and spec in corrupted.output, corrupted.output
    searched = wide.invoke(app, ["search", "--ed", "4", "--lr", "0.001", "--weight-decay", "0",
                                 "--folds", "2", "--epochs", "1", "--batch-size", "50",
                                 "--limit", "100", "--model", spec, *common])
    assert searched.exit_code == 0, searched.output
    assert f"{spec}, ED 4:" in searched.output
