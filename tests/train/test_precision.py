"""`--precision`: bf16-mixed training in every mode and in the batched search, recorded in the
run's files, refused on resume in another precision, and `auto` still meaning `32`."""

from __future__ import annotations

import json
import types

import pytest
import torch
from typer.testing import CliRunner

from aetool import workspace as runs
from aetool.cli import app
from aetool.config import FitConfig, preset_config
from aetool.errors import RunError, SettingError
from aetool.models import build_model
from aetool.train import fast
from aetool.train.batched import TrainJob, train_batched, train_sequential
from aetool.train.fast import precision as precision_module
from aetool.train.fast.precision import Precision, resolve_precision
from aetool.train.loop import fit, resume_config
from aetool.train.step import train_epoch

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def small(**overrides) -> FitConfig:
    values = dict(ed=4, max_epochs=2, batch_size=100, device="cpu", lr=1e-2)
    values.update(overrides)
    return preset_config("report", **values)


def one_epoch(images, mode: str, precision: str) -> tuple[float, set[torch.dtype]]:
    """One epoch of a fresh seeded course model; the loss and the dtypes its convolutions
    produced while training."""
    torch.manual_seed(0)
    model = build_model("course", 4, "cpu")
    dtypes: set[torch.dtype] = set()
    for module in model.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            module.register_forward_hook(lambda m, i, out: dtypes.add(out.dtype))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    run_epoch = fast.make_train_epoch(model, optimizer, "cpu", mode, precision)
    loss = run_epoch(model, optimizer, images, 100, torch.Generator().manual_seed(0))
    return loss, dtypes


@pytest.mark.parametrize("mode", ["eager", "tuned"])
def test_bf16_mixed_trains_close_to_float32_but_in_bf16(fake_split, mode):
    images = fake_split.train[:300]
    loss32, dtypes32 = one_epoch(images, mode, "32")
    loss16, dtypes16 = one_epoch(images, mode, "bf16-mixed")
    assert dtypes32 == {torch.float32}
    assert torch.bfloat16 in dtypes16  # autocast is active: convolutions ran in bf16
    assert loss16 == pytest.approx(loss32, rel=0.05)
    assert loss16 != loss32


def test_reference_epoch_takes_a_precision(fake_split):
    torch.manual_seed(0)
    model = build_model("course", 4, "cpu")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss = train_epoch(model, optimizer, fake_split.train[:200], 100,
                       torch.Generator().manual_seed(0), precision=Precision("bf16-mixed"))
    assert 0 < loss < 1
    assert all(p.dtype == torch.float32 for p in model.parameters())  # weights stay float32


def test_config_and_metrics_record_the_precision(fake_split, tmp_path):
    result = fit(small(precision="bf16-mixed"), tmp_path / "r", split=fake_split)
    config = json.loads((tmp_path / "r" / runs.CONFIG).read_text())
    metrics = json.loads((tmp_path / "r" / runs.METRICS).read_text())
    assert config["precision"] == "bf16-mixed"
    assert metrics["environment"]["precision"] == "bf16-mixed"
    assert result.config.precision == "bf16-mixed"


def test_auto_is_recorded_as_what_it_resolved_to(fake_split, tmp_path):
    fit(small(precision="auto"), tmp_path / "r", split=fake_split)
    assert json.loads((tmp_path / "r" / runs.CONFIG).read_text())["precision"] == "32"


def test_resume_in_another_precision_is_refused(fake_split, tmp_path):
    def stop(record, cfg):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(small(precision="bf16-mixed"), tmp_path / "r", split=fake_split, on_epoch=stop)
    with pytest.raises(RunError, match="in precision 32: it was trained in bf16-mixed"):
        fit(small(), tmp_path / "r", split=fake_split, existing="resume")
    with pytest.raises(RunError, match="trained in bf16-mixed"):
        resume_config(tmp_path / "r", precision="32")
    resumed = fit(resume_config(tmp_path / "r"), tmp_path / "r", split=fake_split,
                  existing="resume")
    assert resumed.config.precision == "bf16-mixed" and len(resumed.history) == 2


def test_auto_resolves_to_32_today(monkeypatch):
    assert precision_module.AUTO_BF16_CHECKED is False
    monkeypatch.setattr(precision_module, "native_bf16", lambda device: True)
    assert resolve_precision("auto", "cpu") == "32"
    monkeypatch.setattr(precision_module, "AUTO_BF16_CHECKED", True)
    assert resolve_precision("auto", "cpu") == "bf16-mixed"
    monkeypatch.setattr(precision_module, "native_bf16", lambda device: False)
    assert resolve_precision("auto", "cpu") == "32"


def test_library_refuses_bad_precisions():
    with pytest.raises(SettingError, match="precision must be one of") as info:
        FitConfig.from_dict({"precision": "fp8"})
    assert info.value.field == "precision"
    with pytest.raises(SettingError, match="'16-mixed' needs a CUDA device, not cpu"):
        resolve_precision("16-mixed", "cpu")


@pytest.mark.parametrize("command", ["fit", "search", "study"])
def test_bad_precision_exits_2(command, workspace):
    result = invoke(command, "--precision", "fp8")
    assert result.exit_code == 2
    assert "precision" in result.output and "fp8" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("command", ["fit", "search", "study"])
def test_16_mixed_on_the_cpu_exits_2(command, workspace, fake_data_dir):
    result = invoke(command, "--precision", "16-mixed", "--device", "cpu",
                    "--data-dir", fake_data_dir)
    assert result.exit_code == 2, result.output
    assert "needs a CUDA device" in " ".join(result.output.replace("│", " ").split())
    assert "Traceback" not in result.output


def test_batched_bf16_matches_one_at_a_time(fake_data):
    images = fake_data.train_images[:260]
    index = torch.arange(260)
    config = small(precision="bf16-mixed")
    jobs = [TrainJob(FitConfig(**{**vars(config), "seed": s}), index[:200], index[200:])
            for s in (0, 1)]
    together = train_batched(jobs, images, epochs=1)
    alone = train_sequential(jobs, images, epochs=1)
    float32 = train_sequential([TrainJob(small(), index[:200], index[200:])], images, epochs=1)
    for a, b in zip(together, alone, strict=True):
        assert a.train[0] == pytest.approx(b.train[0], rel=0.02)
        assert a.val[0] == pytest.approx(b.val[0], rel=0.02)
    assert together[0].train[0] != float32[0].train[0]  # bf16 did run


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
@pytest.mark.parametrize("mode, precision", [("graph", "bf16-mixed"), ("tuned", "16-mixed"),
                                             ("eager", "16-mixed")])
def test_cuda_precisions_train_close_to_float32(fake_split, mode, precision):
    images = fake_split.train[:300].cuda()

    def loss(mode: str, precision: str) -> float:
        torch.manual_seed(0)
        model = build_model("course", 4, "cuda")
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        run_epoch = fast.make_train_epoch(model, optimizer, "cuda", mode, precision)
        return run_epoch(model, optimizer, images, 100, torch.Generator().manual_seed(0))

    assert loss(mode, precision) == pytest.approx(loss("eager", "32"), rel=0.05)


def test_16_mixed_cannot_run_in_graph_mode(monkeypatch):
    model = build_model("course", 4, "cpu")
    optimizer = torch.optim.Adam(model.parameters())
    monkeypatch.setattr(fast, "resolve_mode", lambda mode, device: mode)
    scaled = types.SimpleNamespace(name="16-mixed", mixed=True, scaler=object())
    monkeypatch.setattr(fast, "as_precision", lambda precision, device: scaled)
    with pytest.raises(SettingError, match="cannot run in training mode 'graph'"):
        fast.make_train_epoch(model, optimizer, "cpu", "graph", "16-mixed")
