"""The batched trainer: vmap over stacked weights with a vectorised Adam gives, model by
model, the losses of fit's own loop with torch.optim.Adam."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
from torch import nn

from aetool import plugins
from aetool.errors import AetoolError
from aetool.models import Model
from aetool.plugins.hookspecs import hookimpl
from aetool.train.batched import (
    BatchedAdam,
    TrainJob,
    train_batched,
    train_models,
    train_sequential,
    unbatchable,
)
from aetool.train.loop import FitConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest


def test_batched_adam_matches_torch_adam_per_model():
    torch.manual_seed(0)
    settings = [(1e-2, 1e-5), (1e-3, 1e-3), (3e-2, 0.0)]
    start = [torch.randn(5, 3) for _ in settings]
    grads = [[torch.randn(5, 3) for _ in settings] for _ in range(4)]

    reference = []
    for m, (lr, wd) in enumerate(settings):
        p = start[m].clone().requires_grad_()
        adam = torch.optim.Adam([p], lr=lr, weight_decay=wd)
        for step in grads:
            p.grad = step[m].clone()
            adam.step()
        reference.append(p.detach())

    stacked = {"w": torch.stack(start).requires_grad_()}
    adam = BatchedAdam(stacked, [s[0] for s in settings], [s[1] for s in settings])
    for step in grads:
        stacked["w"].grad = torch.stack(step)
        adam.step()
    for m in range(len(settings)):
        torch.testing.assert_close(stacked["w"][m].detach(), reference[m], rtol=1e-5, atol=1e-6)


def test_batched_adam_skips_inactive_models():
    stacked = {"w": torch.ones(2, 3).requires_grad_()}
    adam = BatchedAdam(stacked, [0.1, 0.1], [0.0, 0.0])
    stacked["w"].grad = torch.ones(2, 3)
    adam.step(torch.tensor([True, False]))
    assert torch.all(stacked["w"][1] == 1) and torch.all(stacked["w"][0] < 1)
    assert adam.steps.tolist() == [1, 0]
    assert torch.all(adam.exp_avg["w"][1] == 0)


def _jobs(fake_split, ed=3, batch_size=64):
    images = fake_split.train  # 500 images
    order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(1))
    # Folds of unequal size (193 and 192 training images): with batch 64 the second model
    # has an empty last step, which it must skip.
    folds = [(order[:193], order[193:300]), (order[300:492], order[:108])]
    settings = [(1e-2, 1e-5), (1e-3, 1e-3), (5e-3, 0.0)]
    return images, [
        TrainJob(FitConfig(ed=ed, lr=lr, weight_decay=wd, batch_size=batch_size, seed=seed),
                 tr, va)
        for (lr, wd) in settings for seed, (tr, va) in enumerate(folds)
    ]


def test_batched_training_gives_the_sequential_losses(fake_split):
    images, jobs = _jobs(fake_split)
    sequential = train_sequential(jobs, images, epochs=2)
    batched = train_batched(jobs, images, epochs=2)
    for one, many in zip(sequential, batched, strict=True):
        assert len(many.train) == len(many.val) == 2
        torch.testing.assert_close(torch.tensor(many.train), torch.tensor(one.train),
                                   rtol=2e-4, atol=1e-6)
        torch.testing.assert_close(torch.tensor(many.val), torch.tensor(one.val),
                                   rtol=2e-4, atol=1e-6)
    # The settings really differ, so the match is not a coincidence of identical models.
    assert len({round(c.val[-1], 6) for c in batched}) == len(batched)


def test_train_models_uses_the_loop_for_one_model(fake_split, monkeypatch):
    images, jobs = _jobs(fake_split)
    calls = []
    monkeypatch.setattr("aetool.train.batched.train_batched",
                        lambda *a, **k: calls.append("train_batched"))
    curves = train_models(jobs[:1], images, epochs=1,
                          progress=lambda n: calls.append(("progress", n)))
    # one model, one epoch: progress reports it once, and vmap is never called
    assert calls == [("progress", 1)] and len(curves[0].val) == 1


def test_models_of_different_shapes_are_refused(fake_split):
    images, jobs = _jobs(fake_split)
    other = TrainJob(FitConfig(ed=5, batch_size=64), jobs[0].train_index, jobs[0].val_index)
    with pytest.raises(AetoolError, match="encoding dimension"):
        train_batched([jobs[0], other], images, epochs=1)


# --------------------------------------------------------------------------- models whose
# training and evaluation differ: BatchNorm (running statistics) and Dropout (randomness)


class Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(channels), nn.ReLU())

    def forward(self, x):
        return x + self.body(x)


class SmallBatchNorm(nn.Module):
    """A small convolutional autoencoder with a residual block and BatchNorm on both sides."""

    def __init__(self, ed: int, coupled: bool = False) -> None:
        super().__init__()
        track = not coupled  # without running statistics, eval mode uses the batch's own
        # No bias where BatchNorm follows (directly or after a linear layer): BatchNorm cancels
        # such a bias, so its gradient is rounding noise, which Adam turns into steps of the
        # learning rate that differ between any two ways of computing the same thing (the fast
        # modes, batched), far above float32's rounding.
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 4, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(4, track_running_stats=track), nn.ReLU(), Residual(4),
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


class SmallDropout(nn.Module):
    """A dense autoencoder with Dropout in the encoder."""

    def __init__(self, ed: int) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(),
                                     nn.Dropout(0.2), nn.Linear(32, ed))
        self.decoder = nn.Linear(ed, 784)

    def encode(self, x):
        return self.encoder(x)

    def decode(self, z):
        return torch.sigmoid(self.decoder(z)).view(-1, 1, 28, 28)

    def forward(self, x):
        return self.decode(self.encode(x))


class ModelsPlugin:
    """A throwaway plugin registering the models above, for the length of a test."""

    @hookimpl
    def register_models(self, register):
        register(Model("test-bn", "BatchNorm and a residual block", SmallBatchNorm))
        register(Model("test-bn-coupled", "BatchNorm without running statistics",
                       lambda ed: SmallBatchNorm(ed, coupled=True)))
        register(Model("test-dropout", "Dropout", SmallDropout))


@pytest.fixture()
def test_models():
    plugins.load_plugins()
    plugin = ModelsPlugin()
    plugins.pm.register(plugin, name="test-batched-models")
    yield
    plugins.pm.unregister(plugin)


def _model_jobs(fake_split, model: str) -> tuple[torch.Tensor, list[TrainJob]]:
    # Batches of 50: the folds' last batches (43 and 42 images) differ in size, and BatchNorm1d
    # needs two images per batch in training.
    images, jobs = _jobs(fake_split, batch_size=50)
    return images, [TrainJob(dataclasses.replace(job.config, model=model), job.train_index,
                             job.val_index) for job in jobs[:4]]


def _assert_same_curves(batched, sequential, rtol, train_rtol=None):
    for one, many in zip(sequential, batched, strict=True):
        assert len(many.train) == len(many.val) == len(one.val)
        assert many.train == pytest.approx(one.train, rel=train_rtol or rtol)
        assert many.val == pytest.approx(one.val, rel=rtol)


@pytest.fixture()
def float64(monkeypatch):
    """Images, weights and arithmetic in double precision."""
    from aetool.train import batched

    def to_double(images):
        return images.double() / 255.0

    initial_model = batched.initial_model
    monkeypatch.setattr("aetool.train.batched.to_float", to_double)
    monkeypatch.setattr("aetool.train.step.to_float", to_double)
    monkeypatch.setattr("aetool.train.batched.initial_model", lambda *a: initial_model(*a).double())


def test_a_batchnorm_model_batched_is_one_at_a_time_to_rounding(fake_split, test_models,
                                                                float64):
    # In double precision the two agree to ~1e-11: batch statistics over other images than
    # one at a time (padding, a shared last batch), or running statistics updated or used
    # otherwise (validation in training mode), would show far above that. (Both loops sum
    # the training loss in float32.)
    images, jobs = _model_jobs(fake_split, "test-bn")
    sequential = train_sequential(jobs, images, epochs=2)
    batched = train_batched(jobs, images, epochs=2)
    _assert_same_curves(batched, sequential, rtol=1e-9, train_rtol=1e-6)
    assert len({round(c.val[-1], 6) for c in batched}) == len(batched)


# Every mode the one-at-a-time loop can run on this machine (`compile` is `tuned` plus
# torch.compile, checked against eager in test_models; it compiles for tens of seconds). In
# float32 rounding differences grow with training; here they stay below 1e-6.
MODES = ["eager", "tuned"] + (["graph"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("mode", MODES)
def test_a_batchnorm_model_batched_gives_the_one_at_a_time_losses(fake_split, test_models,
                                                                  mode):
    device = "cuda" if mode == "graph" else "cpu"
    images, jobs = _model_jobs(fake_split, "test-bn")
    images = images.to(device)
    sequential = train_sequential(jobs, images, epochs=2, mode=mode)
    batched = train_batched(jobs, images, epochs=2)
    _assert_same_curves(batched, sequential, rtol=1e-5)


def test_a_batchnorm_model_is_trained_batched(fake_split, test_models, monkeypatch):
    images, jobs = _model_jobs(fake_split, "test-bn")
    assert unbatchable(jobs[0].config, "cpu") is None
    calls = []

    def spy(group, *args, **kwargs):
        calls.append(len(group))
        return train_batched(group, *args, **kwargs)

    monkeypatch.setattr("aetool.train.batched.train_batched", spy)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        curves = train_models(jobs, images, epochs=1)
    assert calls[-1] == len(jobs) and len(curves) == len(jobs)


def test_a_dropout_model_is_trained_one_at_a_time_with_a_note(fake_split, test_models):
    images, jobs = _model_jobs(fake_split, "test-dropout")
    reason = unbatchable(jobs[0].config, "cpu")
    assert reason is not None and "random" in reason and "Dropout" in reason
    with pytest.warns(RuntimeWarning, match="cannot be trained batched") as caught:
        together = train_models(jobs, images, epochs=2)
    note = str(caught[0].message)
    assert "\n" not in note and "one model at a time" in note
    alone = [train_models([job], images, epochs=2)[0] for job in jobs]
    for many, one in zip(together, alone, strict=True):
        assert (many.train, many.val) == (one.train, one.val)


def test_a_model_whose_eval_output_mixes_the_batch_is_trained_one_at_a_time(fake_split,
                                                                            test_models):
    images, jobs = _model_jobs(fake_split, "test-bn-coupled")
    reason = unbatchable(jobs[0].config, "cpu")
    assert reason is not None and "other images" in reason
    with pytest.warns(RuntimeWarning, match="cannot be trained batched"):
        together = train_models(jobs[:2], images, epochs=1)
    alone = train_sequential(jobs[:2], images, epochs=1)
    assert [(c.train, c.val) for c in together] == [(c.train, c.val) for c in alone]


@pytest.mark.parametrize("model", ["test-bn", "test-dropout"])
def test_a_search_gives_the_same_losses_with_any_parallel(model, tmp_path, fake_data_dir,
                                                          test_models):
    from aetool.search.grid import SearchConfig, run_search

    def search(parallel):
        config = SearchConfig(eds=[4], lrs=[1e-2, 1e-3], weight_decays=[1e-5], folds=2,
                              epochs=2, batch_size=64, val_size=100, limit=201,
                              device="cpu", parallel=parallel, max_loss=1.0,
                              max_oscillation=10.0, model=model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            results = run_search(config, tmp_path / f"ws{parallel}", data_dir=fake_data_dir)
        return results["eds"]["4"]["settings"]

    one, four = search(1), search(4)
    for alone, together in zip(one, four, strict=True):
        for key in ("fold_train", "fold_val"):
            assert together[key] == pytest.approx(alone[key], rel=1e-5)
