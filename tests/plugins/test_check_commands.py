"""`aetool models check`, `aetool noises check`, `aetool datasets check` and `aetool.testing`:
the course model passes every check; broken plugins (an `encode` one number too wide, weights
that ignore the seed, an evaluation output that depends on the batch, a noise of the wrong
shape, a data set with labels out of range) fail the right row, exit 1, no traceback."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from aetool import plugins
from aetool.cli import app
from aetool.data.registry import Dataset, DatasetArrays
from aetool.errors import SettingError
from aetool.models import Model, build_model
from aetool.noises import Noise, NoiseParam, rand_like
from aetool.plugins.hookspecs import hookimpl
from aetool.plugins.params import Param
from aetool.testing import (
    Report,
    assert_dataset_ok,
    assert_model_ok,
    assert_noise_ok,
    check_dataset,
    check_model,
    check_noise,
)

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def plain(result) -> str:
    """The output as one line, without Rich's boxes."""
    return " ".join("".join(" " if c in "│╭╮╰╯─" else c for c in result.output).split())


def rows(result) -> dict[str, dict]:
    return {row["name"]: row for row in json.loads(result.stdout)["checks"]}


def failed(report: Report) -> list[str]:
    return [check.name for check in report.failures]


# --------------------------------------------------------------------------- test plugins


class Dense(nn.Module):
    """A small dense autoencoder; `extra` numbers more out of `encode` than ED."""

    def __init__(self, ed: int, hidden: int = 32, extra: int = 0) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(784, hidden), nn.ReLU(),
                                     nn.Linear(hidden, ed + extra))
        self.decoder = nn.Sequential(nn.Linear(ed, hidden), nn.ReLU(), nn.Linear(hidden, 784))

    def encode(self, x):
        return self.encoder(x)

    def decode(self, z):
        return torch.sigmoid(self.decoder(z)).view(-1, 1, 28, 28)

    def forward(self, x):
        return self.decode(self.encode(x))


class Unseeded(Dense):
    """Weights from a generator of its own, seeded from the operating system."""

    def __init__(self, ed: int) -> None:
        super().__init__(ed)
        generator = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(0.05 * torch.randn(p.shape, generator=generator))


class BatchDependent(Dense):
    """BatchNorm without running statistics: in evaluation mode an image's code depends on
    the other images of its batch."""

    def __init__(self, ed: int) -> None:
        super().__init__(ed)
        self.encoder.append(nn.BatchNorm1d(ed, track_running_stats=False))


class WithBatchNorm(nn.Module):
    """A small convolutional autoencoder with BatchNorm (running statistics) on both sides."""

    def __init__(self, ed: int) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 4, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
            nn.Conv2d(4, 4, 3, stride=2, padding=1, bias=False), nn.Flatten(),
            nn.Linear(196, ed, bias=False), nn.BatchNorm1d(ed))
        self.decoder = nn.Sequential(
            nn.Linear(ed, 196), nn.ReLU(), nn.Unflatten(1, (4, 7, 7)),
            nn.ConvTranspose2d(4, 4, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(4),
            nn.ReLU(), nn.ConvTranspose2d(4, 1, 4, stride=2, padding=1))

    def encode(self, x):
        return self.encoder(x)

    def decode(self, z):
        return torch.sigmoid(self.decoder(z))

    def forward(self, x):
        return self.decode(self.encode(x))


class WithDropout(Dense):
    def __init__(self, ed: int) -> None:
        super().__init__(ed)
        self.encoder.insert(3, nn.Dropout(0.2))


def flip(x, generator, p=0.1):
    return torch.where(rand_like(x, generator) < p, 1.0 - x, x)


def halve(x, generator):
    return x[:, :, :14]  # half the image: the wrong shape


def global_noise(x, generator):
    return (x + 0.1 * torch.rand_like(x)).clamp(0, 1)  # torch's global generator, not ours


def band(x, generator, low=0.0, high=1.0):
    return x.clamp(low, high)


def check_band(low, high):
    if low > high:
        raise ValueError("low must not be above high")


def labelled(train_labels, test_labels):
    images = np.zeros((12, 28, 28), dtype=np.uint8)
    return lambda root, progress=None: DatasetArrays(images, images[:4], train_labels,
                                                     test_labels)


class CheckPlugin:
    """Throwaway models, noises and data sets for these tests."""

    @hookimpl
    def register_models(self, register):
        register(Model("check-dense", "dense", Dense, (Param("hidden", int, 32, minimum=1),)))
        register(Model("check-wide-code", "encode gives ED + 1 numbers",
                       lambda ed: Dense(ed, extra=1)))
        register(Model("check-unseeded", "weights ignore the seed", Unseeded))
        register(Model("check-batch-dependent", "eval output depends on the batch",
                       BatchDependent))
        register(Model("check-batchnorm", "BatchNorm with running statistics", WithBatchNorm))
        register(Model("check-dropout", "Dropout", WithDropout))

    @hookimpl
    def register_noises(self, register):
        register(Noise("check-flip", "flip pixels", flip,
                       (NoiseParam("p", float, 0.1, minimum=0, maximum=1),)))
        register(Noise("check-halve", "the wrong shape", halve))
        register(Noise("check-global", "ignores its generator", global_noise))
        register(Noise("check-band", "clamp to a band", band,
                       (NoiseParam("low", float, 0.0, minimum=0, maximum=1),
                        NoiseParam("high", float, 1.0, minimum=0, maximum=1)),
                       validate=check_band))

    @hookimpl
    def register_datasets(self, register):
        good = np.arange(12) % 3, np.arange(4) % 3
        register(Dataset("check-good", "labels 0-2 of 3", labelled(*good), ("a", "b", "c")))
        register(Dataset("check-bad-labels", "a label 7 of 3 classes",
                         labelled(np.full(12, 7), good[1]), ("a", "b", "c")))


@pytest.fixture(autouse=True)
def check_plugin():
    plugins.load_plugins()
    plugin = CheckPlugin()
    plugins.pm.register(plugin, name="check-plugin")
    yield plugin
    plugins.pm.unregister(plugin)


# --------------------------------------------------------------------------- models


def test_the_course_model_passes_every_check():
    report = check_model("course")
    assert report.ok, report
    statuses = {c.name: c.status for c in report.checks}
    assert statuses == {
        "contract": "PASS", "determinism": "PASS", "training": "PASS",
        "state_dict round trip": "PASS", "mode tuned": "PASS", "mode compile": "SKIP",
        "mode graph": "SKIP" if not torch.cuda.is_available() else "PASS",
        "batched": "PASS", "eval consistency": "PASS"}


def test_models_check_prints_one_row_per_check_and_exits_0():
    result = invoke("models", "check", "check-dense:hidden=16", "--device", "cpu")
    assert result.exit_code == 0, result.output
    for name in ("contract", "determinism", "state_dict round trip", "mode tuned", "batched",
                 "eval consistency"):
        assert name in result.output
    assert "PASS" in result.output and "FAIL" not in result.output
    assert "All 9 checks" in plain(result)


def test_an_encode_one_number_too_wide_fails_the_contract_in_one_sentence():
    result = invoke("models", "check", "check-wide-code", "--device", "cpu", "--json")
    assert result.exit_code == 1, result.output
    contract = rows(result)["contract"]
    assert contract["status"] == "FAIL"
    assert "encode returned shape (2, 5), not (2, 4)" in contract["detail"]
    assert "mat1" not in result.output
    assert rows(result)["determinism"]["status"] == "SKIP"  # not run
    # ... and training such a model says the same sentence (exit 2), not torch's words
    with pytest.raises(SettingError, match=r"encode returned shape \(2, 5\), not \(2, 4\)"):
        build_model("check-wide-code", 4)
    fit = invoke("fit", "--model", "check-wide-code", "--ed", "4", "--runs", "unused")
    assert fit.exit_code == 2 and "mat1" not in fit.output


def test_weights_that_ignore_the_seed_fail_determinism():
    result = invoke("models", "check", "check-unseeded", "--device", "cpu", "--json")
    assert result.exit_code == 1, result.output
    found = rows(result)
    assert found["determinism"]["status"] == "FAIL"
    assert "different weights" in found["determinism"]["detail"]
    assert found["contract"]["status"] == "PASS"


def test_an_eval_output_that_depends_on_the_batch_fails_eval_consistency():
    report = check_model("check-batch-dependent")
    assert "eval consistency" in failed(report), report
    row = next(c for c in report.checks if c.name == "eval consistency")
    assert "other images of its batch" in row.detail


def test_a_batchnorm_model_trains_batched_as_one_at_a_time():
    report = check_model("check-batchnorm")
    assert report.ok, report


def test_a_dropout_model_is_trained_one_at_a_time_and_says_so():
    report = check_model("check-dropout")
    batched = next(c for c in report.checks if c.name == "batched")
    assert batched.skipped and "one at a time" in batched.detail, report
    assert report.ok, report


@pytest.mark.parametrize(("args", "needle"), [
    (["nope"], "Unknown model 'nope'"),
    (["course:width=3"], "no parameter 'width'"),
    (["course", "--mode", "turbo"], "Unknown training mode 'turbo'"),
    (["course", "--ed", "0"], "'--ed'"),
])
def test_a_spec_that_does_not_parse_exits_2_in_one_sentence(args, needle):
    result = invoke("models", "check", *args, "--device", "cpu")
    assert result.exit_code == 2, result.output
    assert needle in plain(result)


def test_the_listings_still_list():
    for command in ("models", "noises", "datasets"):
        listed = invoke(command, "--json")
        assert listed.exit_code == 0, listed.output
        names = [row["name"] for row in json.loads(listed.stdout)]
        assert names == sorted(names)  # the three listings in alphabetical order
        table = invoke(command)
        assert table.exit_code == 0 and f"aetool {command}" in table.output
    params = {row["name"]: row["params"] for row in json.loads(invoke("models", "--json").stdout)}
    assert params["check-dense"] == [{"name": "hidden", "type": "int", "default": 32, "help": "",
                                      "choices": None, "minimum": 1, "maximum": None}]


# --------------------------------------------------------------------------- noises


@pytest.mark.parametrize("spec", ["check-flip:p=0.3", "gaussian:sigma=0.3", "occlusion",
                                  "check-band:low=0.2,high=0.8"])
def test_good_noises_pass(spec):
    report = check_noise(spec)
    assert report.ok, report


def test_noises_check_cli_passes_and_fails():
    good = invoke("noises", "check", "check-flip", "--device", "cpu")
    assert good.exit_code == 0, good.output
    assert "parameters" in good.output and "FAIL" not in good.output
    bad = invoke("noises", "check", "check-halve", "--device", "cpu", "--json")
    assert bad.exit_code == 1, bad.output
    shape = rows(bad)["shape"]
    assert shape["status"] == "FAIL" and "(8, 1, 14, 28)" in shape["detail"]
    assert rows(bad)["parameters"]["status"] == "PASS"


def test_a_noise_drawing_from_the_global_generator_fails_determinism():
    report = check_noise("check-global")
    assert failed(report) == ["determinism"], report


def test_a_bad_noise_spec_exits_2():
    for spec, needle in (("nope", "Unknown noise 'nope'"),
                         ("gaussian:sigma=0.1|0.2", "exactly one"),
                         ("check-band:low=0.9,high=0.1", "low must not be above high")):
        result = invoke("noises", "check", spec)
        assert result.exit_code == 2, result.output
        assert needle in plain(result)


# --------------------------------------------------------------------------- data sets


def npz(tmp_path, labels, classes=("zero", "one")):
    images = np.zeros((6, 28, 28), dtype=np.uint8)
    path = tmp_path / "set.npz"
    np.savez(path, x_train=images, y_train=np.asarray(labels), x_test=images[:2],
             y_test=np.array([0, 1]), classes=np.array(classes))
    return path


def test_a_good_data_set_passes(tmp_path):
    result = invoke("datasets", "check", npz(tmp_path, [0, 1, 0, 1, 0, 1]))
    assert result.exit_code == 0, result.output
    for name in ("dtype", "shape", "labels", "split"):
        assert name in result.output
    assert check_dataset("check-good").ok


def test_labels_out_of_range_fail_the_labels_row(tmp_path):
    result = invoke("datasets", "check", npz(tmp_path, [0, 1, 2, 1, 0, 1]), "--json")
    assert result.exit_code == 1, result.output
    found = rows(result)
    assert found["labels"]["status"] == "FAIL"
    assert "from 0 to 2, outside 0-1" in found["labels"]["detail"]
    assert found["dtype"]["status"] == found["shape"]["status"] == "PASS"
    report = check_dataset("check-bad-labels")
    assert "labels" in failed(report) and "from 7 to 7" in str(report)


def test_a_path_that_is_no_data_set_exits_2(tmp_path):
    result = invoke("datasets", "check", tmp_path / "missing.npz")
    assert result.exit_code == 2 and "does not exist" in result.output


# --------------------------------------------------------------------------- from pytest


def test_aetool_testing_from_a_plugin_s_own_tests(tmp_path):
    assert_noise_ok("check-flip")
    assert_dataset_ok(str(npz(tmp_path, [0, 1, 0, 1, 0, 1])))
    with pytest.raises(AssertionError) as caught:
        assert_model_ok("check-wide-code")
    message = str(caught.value)
    assert "FAIL contract" in message and "encode returned shape (2, 5)" in message
    report = check_noise("check-halve")
    assert not report.ok and report.failures[0].name == "shape"
    assert json.loads(json.dumps(report.as_dict()))["ok"] is False
