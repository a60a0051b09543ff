"""Every run records what provided its model, data set and noise (issue 21, provenance)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from aetool import __version__, plugins
from aetool.cli import app
from aetool.models import Autoencoder, Model
from aetool.plugins.hookspecs import hookimpl

runner = CliRunner()


def fit(tmp_path, data_dir, *extra):
    result = runner.invoke(app, [str(a) for a in (
        "fit", "--ed", "4", "--max-epochs", "1", "--batch-size", "100", "--val-size", "100",
        "--device", "cpu", "--data-dir", data_dir, "--runs", tmp_path / "ws", *extra)])
    assert result.exit_code == 0, result.output
    run = tmp_path / "ws" / "ed4"
    return (json.loads((run / "config.json").read_text()),
            json.loads((run / "metrics.json").read_text()))


def test_a_run_records_the_packages_and_versions_that_made_it(tmp_path, fake_data_dir):
    config, metrics = fit(tmp_path, fake_data_dir, "--noise", "gaussian:sigma=0.1")
    expected = {
        "aetool": __version__,
        "model": {"package": "aetool", "version": __version__,
                  "plugin": "aetool.plugins.default.course"},
        "dataset": {"package": "aetool", "version": __version__,
                    "plugin": "aetool.plugins.default.mnist"},
        "noise": {"package": "aetool", "version": __version__,
                  "plugin": "aetool.plugins.default.gaussian"},
    }
    assert config["provenance"] == expected and metrics["provenance"] == expected


class HandMade:
    @hookimpl
    def register_models(self, register):
        register(Model("handmade", "the course model under another name", Autoencoder))


def test_a_plugin_model_and_a_data_path_are_recorded(tmp_path, fake_data_dir):
    plugins.load_plugins()
    plugins.pm.register(HandMade(), name="handmade-plugin")
    try:
        config, metrics = fit(tmp_path, fake_data_dir, "--model", "handmade",
                              "--dataset", fake_data_dir / "MNIST" / "raw")
    finally:
        plugins.pm.unregister(name="handmade-plugin")
    assert config["provenance"]["model"] == {"package": "handmade-plugin", "version": None,
                                             "plugin": "handmade-plugin"}
    assert config["provenance"]["dataset"] == {"path": str(fake_data_dir / "MNIST" / "raw")}
    assert "noise" not in config["provenance"]
    assert metrics["provenance"] == config["provenance"]


def test_a_run_made_with_another_version_of_its_model_s_package_warns(tmp_path, fake_data_dir):
    config, _ = fit(tmp_path, fake_data_dir)
    config["provenance"]["model"]["version"] = "0.0.1"
    (tmp_path / "ws" / "ed4" / "config.json").write_text(json.dumps(config))
    result = runner.invoke(app, [str(a) for a in (
        "corrupt", "--run", "ed4", "--noise", "original", "--device", "cpu", "--data-dir",
        fake_data_dir, "--runs", tmp_path / "ws")])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "trained with aetool 0.0.1" in said and f"aetool {__version__} provides" in said


def test_a_run_whose_plugin_is_gone_names_the_package_to_install(tmp_path, fake_data_dir):
    plugins.load_plugins()
    plugins.pm.register(HandMade(), name="handmade-plugin")
    try:
        config, _ = fit(tmp_path, fake_data_dir, "--model", "handmade")
    finally:
        plugins.pm.unregister(name="handmade-plugin")
    config["provenance"]["model"].update(package="aetool-handmade", version="1.2")
    (tmp_path / "ws" / "ed4" / "config.json").write_text(json.dumps(config))
    result = runner.invoke(app, [str(a) for a in (
        "corrupt", "--run", "ed4", "--noise", "original", "--device", "cpu", "--data-dir",
        fake_data_dir, "--runs", tmp_path / "ws")])
    said = " ".join(result.output.split())
    assert result.exit_code == 1, result.output
    assert "Run 'ed4' cannot be loaded" in said and "install aetool-handmade 1.2" in said
    assert "Traceback" not in result.output
