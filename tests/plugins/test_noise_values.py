"""Noise parameter values: non-finite and contradictory values are refused by `corrupt` and
`fit --noise` (exit 2, nothing written), and a plugin's noise validates its parameters
together."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Said, snapshot
from typer.testing import CliRunner

from aetool.cli import app

runner = CliRunner()


def invoke(*args) -> Said:
    return Said(runner.invoke(app, [str(a) for a in args]))


def small_args(data_dir: Path) -> list[str]:
    return ["--max-epochs", "1", "--batch-size", "100", "--val-size", "100", "--device", "cpu",
            "--data-dir", str(data_dir)]


@pytest.mark.parametrize("spec", ["gaussian:sigma=nan", "gaussian:sigma=inf",
                                  "gaussian:sigma=1e999", "uniform:low=1,high=0"])
def test_non_finite_and_contradictory_noises_are_refused(spec, finished, fake_data_dir):
    _, workspace = finished
    assert invoke("corrupt", "--noise", "original", "--device", "cpu",
                  "--data-dir", fake_data_dir).exit_code == 0
    before = snapshot(workspace)
    result = invoke("corrupt", "--noise", spec, "--device", "cpu", "--data-dir", fake_data_dir)
    assert result.exit_code == 2, result.output
    assert "finite number" in result.output or "low must not be above high" in result.output
    fitted = invoke("fit", "--name", "denoise", "--noise", spec, *small_args(fake_data_dir))
    assert fitted.exit_code == 2, fitted.output
    assert snapshot(workspace) == before


def test_a_noise_plugin_validates_its_parameters_together():
    from aetool.noises import Noise, NoiseParam

    noise = Noise("band", "", lambda x, g, a, b: x,
                  (NoiseParam("a", float, 0.0), NoiseParam("b", float, 1.0)),
                  validate=lambda a, b: None if a < b else (_ for _ in ()).throw(
                      ValueError("a must be below b")))
    assert noise.configure(a=0.5).params == {"a": 0.5, "b": 1.0}
    with pytest.raises(Exception, match="Noise 'band': a must be below b."):
        noise.configure(a=2.0)
