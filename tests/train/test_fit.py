"""Training: the loss goes down, early stopping, the run folder, interrupt and resume."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from aetool import workspace as runs
from aetool.errors import AetoolError, RunError
from aetool.models import Model
from aetool.train.loop import (
    DEFAULT_PRESET,
    FitConfig,
    collapse_check_epoch,
    fit,
    learning_rate,
    preset_config,
    resume_config,
    should_stop,
)
from aetool.train.step import mean_image_mse


def small(preset: str = "report", **overrides) -> FitConfig:
    values = dict(ed=4, max_epochs=3, batch_size=100, device="cpu", lr=1e-2)
    values.update(overrides)
    return preset_config(preset, **values)


def test_report_preset_is_the_report():
    config = preset_config("report")
    assert (config.lr, config.weight_decay, config.batch_size) == (1e-2, 1e-5, 1000)
    assert (config.max_epochs, config.patience, config.tolerance) == (2000, 100, 1e-4)
    assert config.schedule == "constant"


def test_the_improved_recipe_is_the_default_and_the_study_follows_it():
    from aetool.experiment import StudySettings

    config = preset_config()
    assert DEFAULT_PRESET == "best" and config.preset == "best"
    assert config.schedule == "cosine" and config.patience == 0 and config.warmup_epochs > 0
    assert StudySettings().preset == DEFAULT_PRESET


def test_bad_settings_are_refused():
    with pytest.raises(AetoolError, match="^lr must be positive"):
        small(lr=-1)
    with pytest.raises(AetoolError, match="Unknown preset"):
        preset_config("fastest")


def test_short_fit_lowers_the_loss_and_writes_the_run(fake_split, tmp_path):
    run_dir = tmp_path / "ed4"
    seen = []
    result = fit(
        small(max_epochs=4), run_dir, split=fake_split, on_epoch=lambda r, c: seen.append(r)
    )
    assert [r.epoch for r in seen] == [1, 2, 3, 4]
    assert result.history[-1].train_loss < result.history[0].train_loss
    assert result.history[-1].val_loss < result.history[0].val_loss
    for name in (runs.CONFIG, runs.HISTORY, runs.MODEL, runs.STATE, runs.METRICS):
        assert (run_dir / name).is_file(), name
    assert json.loads((run_dir / runs.CONFIG).read_text())["ed"] == 4
    metrics = json.loads((run_dir / runs.METRICS).read_text())
    assert metrics["test_mse"] == pytest.approx(result.test_mse)
    assert metrics["epochs"] == 4 and metrics["environment"]["device"] == "cpu"
    assert not list(run_dir.glob(".*tmp*")), "no temporary files are left behind"
    # the checkpoint is a bare state_dict that loads safely and is the best epoch's weights
    state = torch.load(run_dir / runs.MODEL, weights_only=True)
    assert "encoder_lin.2.weight" in state
    run = runs.open_run(run_dir)
    assert run.finished and run.ed == 4 and len(run.history()) == 4


def test_best_checkpoint_is_the_lowest_validation_loss(fake_split, tmp_path):
    result = fit(small(max_epochs=4, lr=0.05), tmp_path / "r", split=fake_split)
    vals = [r.val_loss for r in result.history]
    assert result.best_epoch == vals.index(min(vals)) + 1
    model = runs.open_run(tmp_path / "r").model()
    from aetool.train.loop import evaluate

    assert evaluate(model, fake_split.val) == pytest.approx(min(vals), rel=1e-5)


class _MeanImage(torch.nn.Module):
    """An autoencoder that has collapsed: its reconstruction ignores the code, so the best it
    can learn is the mean image."""

    def __init__(self, ed: int) -> None:
        super().__init__()
        self.encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, ed))
        self.image = torch.nn.Parameter(torch.zeros(1, 1, 28, 28))

    def encode(self, x):
        return self.encoder(x)

    def decode(self, z):
        return torch.sigmoid(self.image + 0 * z.sum(1).view(-1, 1, 1, 1))

    def forward(self, x):
        return self.decode(self.encode(x))


@pytest.fixture()
def mean_image_model(plugin):
    plugin("test-mean-image", register_models=lambda register: register(Model(
        "test-mean-image", "reconstructs every image as one learned image", _MeanImage)))
    return "test-mean-image"


def test_a_model_still_at_the_mean_image_after_1000_steps_is_called_collapsed(
        fake_split, tmp_path, mean_image_model):
    """A wide:depth=6 run at ED 8 sat at the mean image's error from its first epoch on and
    would have spent two hours there (benchmarks/README.md): the loop says so once, after the
    epoch that reaches 1000 steps (here 20 of 50 steps), and trains on; a model that learns is
    not warned about."""
    assert collapse_check_epoch(500, 10) == 20 and collapse_check_epoch(58_000, 128) == 3
    assert collapse_check_epoch(500, 100) == 200 and collapse_check_epoch(10**6, 128) == 2
    with pytest.warns(runs.RunWarning, match=r"^After 20 epochs the validation loss \(0\.\d+\) "
                      r"is no better than the mean image's \(0\.\d+\)") as caught:
        fit(small(max_epochs=22, batch_size=10, lr=0.05, model=mean_image_model),
            tmp_path / "m", split=fake_split)
    assert len([w for w in caught if issubclass(w.category, runs.RunWarning)]) == 1
    assert json.loads((tmp_path / "m" / runs.METRICS).read_text())["epochs"] == 22
    with warnings.catch_warnings():
        warnings.simplefilter("error", runs.RunWarning)
        result = fit(small(max_epochs=20, batch_size=10, lr=1e-3), tmp_path / "c",
                     split=fake_split)
    assert result.history[-1].val_loss < mean_image_mse(fake_split.val)


def test_mean_image_mse_is_the_per_pixel_variance():
    images = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 1, 28, 28)
    assert mean_image_mse(images.contiguous()) == pytest.approx(0.25)
    assert mean_image_mse(torch.full((3, 1, 28, 28), 7, dtype=torch.uint8)) == 0.0


def test_early_stopping_rule():
    assert not should_stop([0.5] * 5, patience=5, tolerance=1e-4)  # not enough epochs yet
    assert should_stop([0.5] * 6, patience=5, tolerance=1e-4)  # plateau
    assert not should_stop([0.6, 0.5, 0.5, 0.5, 0.5, 0.5], patience=5, tolerance=1e-4)
    assert not should_stop([0.5] * 50, patience=0, tolerance=1.0)  # 0 turns it off


def test_early_stopping_fires_on_a_plateau(fake_split, tmp_path):
    # A zero learning rate rate is a perfect plateau: the run stops after `patience` epochs.
    config = small(max_epochs=50, patience=3, tolerance=1e-4, lr=1e-12)
    result = fit(config, None, split=fake_split)
    assert result.stopped_early and len(result.history) == 4


def test_cosine_schedule():
    config = small(schedule="cosine", max_epochs=10, lr=0.1)
    assert learning_rate(config, 0) == pytest.approx(0.1)
    assert learning_rate(config, 5) == pytest.approx(0.05)
    assert learning_rate(small(), 7) == pytest.approx(1e-2)


def test_same_seed_same_result(fake_split):
    a = fit(small(max_epochs=2), None, split=fake_split)
    b = fit(small(max_epochs=2), None, split=fake_split)
    assert [r.val_loss for r in a.history] == [r.val_loss for r in b.history]


@pytest.mark.parametrize("preset", ["report", "best"])
def test_interrupt_keeps_finished_epochs_and_resume_reaches_the_same_result(
    preset, fake_split, tmp_path
):
    config = small(preset, max_epochs=4)
    straight = fit(config, tmp_path / "straight", split=fake_split)

    run_dir = tmp_path / "interrupted"

    def interrupt_after_two(record, cfg):
        if record.epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(config, run_dir, split=fake_split, on_epoch=interrupt_after_two)
    assert len(json.loads((run_dir / runs.HISTORY).read_text())) == 2
    assert not (run_dir / runs.METRICS).exists()
    with pytest.raises(RunError, match="--resume"):
        fit(config, run_dir, split=fake_split)

    resumed = fit(resume_config(run_dir), run_dir, split=fake_split, existing="resume")
    assert [r.epoch for r in resumed.history] == [1, 2, 3, 4]
    for a, b in zip(straight.history, resumed.history, strict=True):
        assert a.train_loss == pytest.approx(b.train_loss, rel=1e-6)
        assert a.val_loss == pytest.approx(b.val_loss, rel=1e-6)
    assert resumed.test_mse == pytest.approx(straight.test_mse, rel=1e-6)
    with pytest.raises(RunError, match="already finished"):
        fit(config, run_dir, split=fake_split, existing="resume")


def test_resume_refuses_other_settings(fake_split, tmp_path):
    def stop(record, cfg):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(small(), tmp_path / "r", split=fake_split, on_epoch=stop)
    with pytest.raises(RunError, match="differ in lr"):
        fit(small(lr=0.5), tmp_path / "r", split=fake_split, existing="resume")


def test_resume_refuses_a_new_length_for_a_cosine_schedule(fake_split, tmp_path):
    def stop(record, cfg):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(small("best", max_epochs=4), tmp_path / "r", split=fake_split, on_epoch=stop)
    longer = resume_config(tmp_path / "r", max_epochs=8)
    with pytest.raises(RunError, match="cosine schedule decays over the 4 epochs"):
        fit(longer, tmp_path / "r", split=fake_split, existing="resume")
    resumed = fit(resume_config(tmp_path / "r"), tmp_path / "r", split=fake_split,
                  existing="resume")
    assert [r.epoch for r in resumed.history] == [1, 2, 3, 4]
    assert resumed.history[-1].lr < resumed.history[1].lr  # decayed on the original schedule


def test_divergence_is_reported(fake_split):
    with pytest.raises(AetoolError, match="diverged"):
        fit(small(lr=1e30, max_epochs=2), None, split=fake_split)
