"""The default recipe (`--preset best`) is what the README says, and its learning rate ramps
up linearly over the warm-up, then follows the cosine to 0, in the fit itself."""

from __future__ import annotations

import math
import re

import pytest
from conftest import ROOT

from aetool.train.loop import DEFAULT_PRESET, fit, learning_rate, preset_config

README = ROOT / "docs" / "fit.md"


def test_the_best_preset_is_the_readme_s_recipe():
    config = preset_config("best")
    assert DEFAULT_PRESET == "best"
    assert (config.lr, config.weight_decay, config.batch_size) == (1e-2, 1e-5, 128)
    assert (config.schedule, config.warmup_epochs, config.max_epochs) == ("cosine", 3, 1000)
    assert config.patience == 0  # no early stopping: the best validation epoch is kept
    # ... and the README states those same values
    text = " ".join(README.read_text().split())
    sentence = re.search(r"The defaults \(`--preset best`\) are a recipe.*?\(1000\)", text)
    assert sentence, "docs/fit.md no longer describes the best preset where it did"
    for stated in ("learning rate 1e-2", "weight decay 1e-5", "batch 128",
                   "a 3-epoch linear warm-up", "cosine decay of the learning rate to 0",
                   "(1000)", "no early stopping"):
        assert stated in sentence.group(0) + text[sentence.end() : sentence.end() + 100]


def cosine(lr: float, epoch: int, max_epochs: int) -> float:
    return lr * 0.5 * (1 + math.cos(math.pi * epoch / max_epochs))


def test_the_warm_up_ramps_linearly_into_the_cosine():
    config = preset_config("best")  # lr 1e-2, 3 warm-up epochs, 1000 epochs
    ramp = [learning_rate(config, e) for e in range(4)]
    assert ramp == pytest.approx([
        1e-2 / 3 * cosine(1, 0, 1000), 2e-2 / 3 * cosine(1, 1, 1000),
        1e-2 * cosine(1, 2, 1000), 1e-2 * cosine(1, 3, 1000),
    ], rel=1e-12)
    assert ramp[0] == pytest.approx(1e-2 / 3, rel=1e-12)  # the first epoch: a third
    assert learning_rate(config, 500) == pytest.approx(5e-3, rel=1e-12)  # half-way: half
    assert 0 < learning_rate(config, 999) < 1e-6  # the last epoch: nearly 0
    # the warm-up applies to a constant rate too: 1/4, 2/4, 3/4, 4/4, then the rate
    constant = preset_config("report", warmup_epochs=4)
    assert [learning_rate(constant, e) for e in range(6)] == pytest.approx(
        [2.5e-3, 5e-3, 7.5e-3, 1e-2, 1e-2, 1e-2], rel=1e-12
    )
    assert learning_rate(preset_config("report"), 0) == 1e-2  # the report: no warm-up


def test_fit_trains_each_epoch_at_the_scheduled_rate(fake_split):
    config = preset_config("best", ed=3, max_epochs=5, device="cpu")  # 3 of 5 epochs warm up
    result = fit(config, None, split=fake_split)
    expected = [1e-2 / 3 * cosine(1, 0, 5), 2e-2 / 3 * cosine(1, 1, 5),
                cosine(1e-2, 2, 5), cosine(1e-2, 3, 5), cosine(1e-2, 4, 5)]
    assert [r.lr for r in result.history] == pytest.approx(expected, rel=1e-12)
