"""Noises: the plugin registry, the built-ins' semantics, specs, broken plugins, the example
plugin installed for real, and training a denoising autoencoder with `fit --noise`."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import math
import sys
import warnings

import pytest
import torch
import typer
from typer.testing import CliRunner

from aetool import plugins
from aetool import workspace as runs
from aetool.cli import app
from aetool.cli.noises import check_noise_option
from aetool.errors import AetoolError, SettingError
from aetool.noises import (
    DEFAULT_NOISE_SPECS,
    Noise,
    NoiseParam,
    build_noise,
    parse_noise_spec,
    parse_noise_specs,
    registered_noises,
)
from aetool.plugins import PluginWarning
from aetool.plugins.hookspecs import hookimpl
from aetool.train.loop import fit, preset_config

runner = CliRunner()
BUILTINS = {"gaussian", "uniform", "occlusion"}


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def images(n: int = 200, seed: int = 0) -> torch.Tensor:
    """A float batch with no zero pixel, so that occluded pixels are easy to find."""
    return 0.1 + 0.8 * torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def invert(x: torch.Tensor, generator: torch.Generator, amount: float = 1.0) -> torch.Tensor:
    return x + amount * (1 - 2 * x)


class ThrowawayPlugin:
    """Registers one extra noise, as a third-party plugin would."""

    @hookimpl
    def register_noises(self, register):
        register(Noise("invert", "1 - x, for the tests.", invert,
                       (NoiseParam("amount", float, 1.0, "how much"),)))


class DuplicatePlugin:
    @hookimpl
    def register_noises(self, register):
        register(Noise("gaussian", "An impostor.", lambda x, generator: x * 0))
        register(Noise("fine", "Still registered.", lambda x, generator: x))


class RaisingPlugin:
    @hookimpl
    def register_noises(self, register):
        raise RuntimeError("boom")


@pytest.fixture()
def throwaway_plugin():
    plugins.load_plugins()
    plugin = ThrowawayPlugin()
    plugins.pm.register(plugin, name="throwaway")
    yield plugin
    plugins.pm.unregister(plugin)


# --------------------------------------------------------------------------- the registry


def test_builtins_are_plugins_and_installed_plugins_stay_out():
    noises = registered_noises()
    assert BUILTINS <= set(noises)
    for name in BUILTINS:
        assert noises[name].plugin == f"aetool.plugins.default.{name}"
    assert "saltpepper" not in noises  # AETOOL_NO_ENTRYPOINTS=1 (conftest)


def test_load_plugins_is_idempotent():
    plugins.load_plugins()
    before = list(plugins.pm.list_name_plugin())
    plugins.load_plugins()
    assert list(plugins.pm.list_name_plugin()) == before


def test_throwaway_plugin_registers_through_the_same_hook(throwaway_plugin):
    noise = registered_noises()["invert"]
    assert noise.plugin == "throwaway"
    x = images(4)
    assert torch.allclose(build_noise("invert")(x, gen()), 1 - x)
    result = invoke("noises", "--json")
    assert result.exit_code == 0, result.output
    listed = {row["name"]: row for row in json.loads(result.stdout)}
    assert listed["invert"]["plugin"] == "throwaway"
    assert listed["gaussian"]["params"][0] == {
        "name": "sigma", "type": "float", "default": 0.5,
        "help": "standard deviation of the added noise", "choices": None,
    }


def test_throwaway_plugin_is_gone_after_its_fixture():
    assert "invert" not in registered_noises()


def test_noises_table_lists_name_plugin_parameters_and_defaults():
    result = invoke("noises")
    assert result.exit_code == 0, result.output
    for needle in ("gaussian", "occlusion", "uniform", "sigma: float = 0.5", "size: int = 14",
                   "plugin"):
        assert needle in result.output


# --------------------------------------------------------------------------- built-ins


def test_gaussian_adds_zero_mean_noise_with_spread_sigma():
    x = images()
    for sigma in (0.1, 1.0, 2.0):
        added = build_noise(f"gaussian:sigma={sigma}")(x, gen()) - x
        assert abs(added.mean().item()) < 0.02 * sigma
        assert added.std().item() == pytest.approx(sigma, rel=0.01)
    noisy = build_noise("gaussian:sigma=1")(x, gen())
    assert noisy.min() < 0 and noisy.max() > 1  # no clipping by default
    clipped = build_noise("gaussian:sigma=1,clip=true")(x, gen())
    assert clipped.min() == 0 and clipped.max() == 1


def test_uniform_adds_u_low_high():
    x = images()
    added = build_noise("uniform")(x, gen()) - x
    assert added.mean().item() == pytest.approx(0.5, abs=0.005)
    assert added.std().item() == pytest.approx(1 / math.sqrt(12), rel=0.01)
    assert added.min() >= -1e-6 and added.max() < 1 + 1e-6
    assert build_noise("uniform")(x, gen()).max() > 1  # no clipping by default
    added = build_noise("uniform:low=-0.2,high=0.2")(x, gen()) - x
    assert added.mean().item() == pytest.approx(0.0, abs=0.003)
    assert added.min() >= -0.2 - 1e-6 and added.max() <= 0.2 + 1e-6
    assert build_noise("uniform:clip=true")(x, gen()).max() <= 1


def quadrant_masks(size: int = 14) -> torch.Tensor:
    masks = torch.zeros(4, 28, 28, dtype=torch.bool)
    for q in range(4):
        top, left = (q // 2) * (28 - size), (q % 2) * (28 - size)
        masks[q, top : top + size, left : left + size] = True
    return masks


def test_occlusion_zeros_exactly_one_quadrant_per_image():
    x = images(400)
    out = build_noise("occlusion")(x, gen())
    zero = (out == 0)[:, 0]
    assert (zero.sum(dim=(1, 2)) == 14 * 14).all()
    matches = (zero[:, None] == quadrant_masks()[None]).all(dim=(2, 3))  # (N, 4)
    assert (matches.sum(dim=1) == 1).all()
    assert (matches.sum(dim=0) > 60).all()  # every quadrant is drawn
    assert torch.equal(out[~(out == 0)], x[~(out == 0)])  # the rest is untouched


def test_occlusion_at_a_random_position_is_one_size_by_size_square():
    x = images(300)
    out = build_noise("occlusion:size=5,position=random")(x, gen())
    zero = (out == 0)[:, 0]
    assert (zero.sum(dim=(1, 2)) == 25).all()
    rows, cols = zero.any(dim=2), zero.any(dim=1)
    assert (rows.sum(dim=1) == 5).all() and (cols.sum(dim=1) == 5).all()  # a 5x5 square
    tops = rows.float().argmax(dim=1)
    assert tops.min() == 0 and tops.max() == 23  # anywhere, up to the border
    with pytest.raises(AetoolError, match="size must be at most 28, got 29"):
        build_noise("occlusion:size=29")  # refused when parsed, before any work
    from aetool.plugins.default.occlusion import occlude

    with pytest.raises(AetoolError, match="does not fit"):  # smaller images than MNIST's
        occlude(x[:, :, :20, :20], gen(), size=21)


@pytest.mark.parametrize("spec", ["gaussian", "uniform", "occlusion",
                                  "occlusion:position=random"])
def test_a_seed_fixes_the_noise(spec):
    noise, x = build_noise(spec), images(50)
    assert torch.equal(noise(x, gen(7)), noise(x, gen(7)))
    assert not torch.equal(noise(x, gen(7)), noise(x, gen(8)))


def test_noises_keep_dtype_and_device():
    x = images(3).double()
    for spec in ("gaussian", "uniform", "occlusion"):
        out = build_noise(spec)(x, gen())
        assert out.dtype == x.dtype and out.device == x.device and out.shape == x.shape


# --------------------------------------------------------------------------- specs


def test_specs_expand_sweeps_and_label_rows_like_the_report():
    labels = [n.label for n in parse_noise_specs(DEFAULT_NOISE_SPECS)]
    assert labels == ["original", "N(0,0.1)", "N(0,0.3)", "N(0,0.5)", "N(0,1)", "N(0,2)",
                      "occlusion", "uniform"]
    sweep = parse_noise_spec(" uniform : low=-0.5|0 , high=0.5|1 ")
    assert [(n.params["low"], n.params["high"]) for n in sweep] == [
        (-0.5, 0.5), (-0.5, 1.0), (0.0, 0.5), (0.0, 1.0)]
    assert sweep[0].label == "uniform(low=-0.5,high=0.5)"
    assert parse_noise_spec("occlusion:size=7")[0].params == {"size": 7, "position": "quadrant"}
    assert parse_noise_spec("gaussian:clip=yes")[0].label == "N(0,0.5) clipped"
    # repeats are dropped; a spec round-trips
    assert len(parse_noise_specs(["gaussian", "gaussian:sigma=0.5"])) == 1
    noise = parse_noise_spec("gaussian:sigma=0.123456789")[0]
    assert build_noise(noise.spec).params == noise.params


@pytest.mark.parametrize(
    "spec, needles",
    [
        ("nope", ["Unknown noise 'nope'", "original, gaussian, occlusion, uniform"]),
        ("gaussian:sgma=1", ["no parameter 'sgma'", "sigma, clip"]),
        ("gaussian:sigma=abc", ["sigma must be a number"]),
        ("gaussian:sigma=-1", ["at least 0"]),
        ("occlusion:size=1.5", ["whole number"]),
        ("occlusion:position=middle", ["quadrant, random"]),
        ("gaussian:clip=maybe", ["true or false"]),
        ("gaussian:sigma", ["param=value"]),
        ("gaussian:sigma=1,sigma=2", ["twice"]),
        (":sigma=1", ["Empty noise name"]),
    ],
)
def test_bad_specs_say_what_exists(spec, needles):
    with pytest.raises(AetoolError) as error:
        parse_noise_spec(spec)
    for needle in needles:
        assert needle in str(error.value)


def test_build_noise_takes_exactly_one():
    with pytest.raises(AetoolError, match="exactly one"):
        build_noise("gaussian:sigma=0.1|0.2")


@pytest.mark.parametrize(
    "spec, needle",
    [("nope", "gaussian, occlusion, uniform"), ("gaussian:sgma=1", "sigma, clip"),
     ("uniform:low=x", "low must be a number")],
)
def test_cli_bad_noise_exits_2_listing_what_exists(spec, needle, workspace):
    result = invoke("corrupt", "--noise", spec)
    assert result.exit_code == 2
    assert needle in " ".join(result.output.split()).replace("│ ", "").replace(" │", "")
    assert "Traceback" not in result.output


def test_fit_noise_option_check_is_a_usage_error():
    assert check_noise_option("gaussian:sigma=0.3") == "gaussian:sigma=0.3"
    assert check_noise_option(None) is None
    with pytest.raises(typer.BadParameter, match="gaussian, occlusion, uniform"):
        check_noise_option("nope")


# --------------------------------------------------------------------------- broken plugins


def test_a_name_registered_by_two_packages_is_refused_unqualified():
    """Issue 21: no silent winner; both stay reachable as PACKAGE/NAME."""
    plugins.load_plugins()
    duplicate = DuplicatePlugin()
    plugins.pm.register(duplicate, name="duplicate-plugin")
    try:
        noises = registered_noises()
        with pytest.raises(SettingError, match="both aetool and duplicate-plugin") as caught:
            noises["gaussian"]
        assert "'aetool/gaussian' or 'duplicate-plugin/gaussian'" in str(caught.value)
        assert noises["aetool/gaussian"].plugin == "aetool.plugins.default.gaussian"
        assert noises["duplicate-plugin/gaussian"].plugin == "duplicate-plugin"
        assert noises["fine"].plugin == "duplicate-plugin"
        result = invoke("noises", "--json")
        assert result.exit_code == 0
        listed = [row["name"] for row in json.loads(result.stdout)]
        assert {"aetool/gaussian", "duplicate-plugin/gaussian", "fine"} <= set(listed)
        assert "gaussian" not in listed
        refused = invoke("corrupt", "--noise", "gaussian:sigma=0.1", "--checkpoint", "x.pt")
        assert refused.exit_code == 2 and "duplicate-plugin/gaussian" in refused.output
    finally:
        plugins.pm.unregister(duplicate)


def test_a_plugin_whose_hook_raises_warns_and_the_rest_work():
    plugins.load_plugins()
    raising = RaisingPlugin()
    plugins.pm.register(raising, name="raising-plugin")
    try:
        with pytest.warns(PluginWarning, match="raising-plugin.*boom"):
            noises = registered_noises()
        assert BUILTINS <= set(noises)
    finally:
        plugins.pm.unregister(raising)


@pytest.mark.parametrize("kind", ["missing", "raises"])
def test_a_plugin_that_fails_to_import_warns_naming_it(kind, fresh_plugins, tmp_path,
                                                       monkeypatch):
    module = f"aetool_test_broken_{kind}"
    if kind == "raises":
        (tmp_path / f"{module}.py").write_text("raise RuntimeError('broken on purpose')\n")
        monkeypatch.syspath_prepend(str(tmp_path))
    entry = importlib.metadata.EntryPoint(name=f"broken-{kind}", value=module, group="aetool")
    monkeypatch.setenv("AETOOL_NO_ENTRYPOINTS", "0")
    monkeypatch.setattr(plugins, "_entry_points", lambda: [entry])
    with pytest.warns(PluginWarning, match=f"broken-{kind}"):
        noises = registered_noises()
    assert BUILTINS <= set(noises)
    assert torch.isfinite(build_noise("gaussian")(images(2), gen())).all()
    sys.modules.pop(module, None)


def test_cli_shows_plugin_warnings_on_stderr(fresh_plugins, monkeypatch):
    entry = importlib.metadata.EntryPoint(name="broken-cli", value="aetool_no_such_module_x",
                                          group="aetool")
    monkeypatch.setenv("AETOOL_NO_ENTRYPOINTS", "0")
    monkeypatch.setattr(plugins, "_entry_points", lambda: [entry])
    result = invoke("noises", "--json")
    assert result.exit_code == 0
    assert "broken-cli" in result.stderr and "Warning" in result.stderr
    assert {row["name"] for row in json.loads(result.stdout)} >= BUILTINS


# --------------------------------------------------------------------------- example plugin


def test_example_plugin_installed_for_real(fresh_plugins, monkeypatch):
    try:
        dist = importlib.metadata.distribution("aetool-saltpepper")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("aetool-saltpepper is not installed "
                    "(scripts/test.sh runs pip install -e plugins/aetool-saltpepper)")
    monkeypatch.setenv("AETOOL_NO_ENTRYPOINTS", "0")
    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginWarning)  # built-ins are not registered twice
        noises = registered_noises()
    assert noises["saltpepper"].plugin == "aetool_saltpepper"
    assert BUILTINS <= set(noises)
    assert plugins.distribution_of("aetool_saltpepper") == ("aetool-saltpepper", dist.version)

    result = invoke("noises", "--json")
    assert result.exit_code == 0, result.output
    listed = {row["name"]: row for row in json.loads(result.stdout)}
    assert listed["saltpepper"]["package"].startswith("aetool-saltpepper")

    x = images(100)
    out = build_noise("saltpepper:amount=0.2,salt_vs_pepper=0.25")(x, gen())
    salt, pepper = (out == 1).float().mean().item(), (out == 0).float().mean().item()
    assert salt == pytest.approx(0.05, abs=0.005) and pepper == pytest.approx(0.15, abs=0.01)
    assert torch.equal(out, build_noise("saltpepper:amount=0.2,salt_vs_pepper=0.25")(x, gen()))


# --------------------------------------------------------------------------- fit --noise


def test_fit_trains_a_denoising_autoencoder_and_records_the_noise(fake_split, tmp_path):
    small = dataclasses.replace(fake_split, train=fake_split.train[:200],
                                train_labels=fake_split.train_labels[:200])
    settings = dict(ed=2, max_epochs=1, batch_size=100, device="cpu", patience=0)
    noisy = fit(preset_config("report", noise="gaussian:sigma=0.3", **settings),
                tmp_path / "noisy", split=small)
    clean = fit(preset_config("report", **settings), None, split=small)
    assert runs.load_json(tmp_path / "noisy" / runs.CONFIG)["noise"] == "gaussian:sigma=0.3"
    assert noisy.history[0].train_loss != clean.history[0].train_loss  # inputs were corrupted
    assert math.isfinite(noisy.test_mse)
    with pytest.raises(AetoolError, match="Unknown noise"):
        fit(preset_config("report", noise="nope", **settings), None, split=small)
