"""The batched trainer: vmap over stacked weights with a vectorised Adam gives, model by
model, the losses of fit's own loop with torch.optim.Adam."""

from __future__ import annotations

import pytest
import torch

from aetool.batched import BatchedAdam, TrainJob, train_batched, train_models, train_sequential
from aetool.errors import AetoolError
from aetool.training import FitConfig


@pytest.fixture(autouse=True)
def one_thread():
    """One CPU thread: other test runs share this machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
    monkeypatch.setattr("aetool.batched.train_batched",
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
