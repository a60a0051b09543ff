"""`fit --noise` trains a denoising autoencoder: corrupted inputs, clean targets (README).

tests/plugins/test_noises.py checks that the noise reaches training at all (the loss differs from a
clean run) and that config.json records it; here the target is checked: a model trained
noisy -> noisy would pass that test, and fails this one.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from aetool import workspace as runs
from aetool.data import to_float
from aetool.models import load_model
from aetool.noises import build_noise
from aetool.train.loop import evaluate, fit, preset_config

# The report's `uniform` noise adds U[0, 1) to every pixel, so a corrupted image is on average
# 0.5 brighter than its clean one: the two targets are far apart, and two epochs tell them
# apart. Measured here (300 images, 2 epochs), reconstructions of corrupted test images had
# MSE 0.116 to the clean images and 0.497 to the corrupted ones; trained noisy -> noisy,
# 0.333 and 0.217. (Whether it beats a clean-trained model under the noise cannot be told in
# so few epochs: both still output about the mean image, MSE ~0.096.)
NOISE = "uniform"


@pytest.mark.parametrize("mode", ["eager", "tuned"])  # the reference loop and the CPU default
def test_a_denoising_autoencoder_learns_the_clean_images(mode, fake_split, tmp_path):
    small = dataclasses.replace(fake_split, train=fake_split.train[:300],
                                train_labels=fake_split.train_labels[:300])
    config = preset_config("report", ed=4, max_epochs=2, batch_size=50, device="cpu",
                           patience=0, noise=NOISE)
    result = fit(config, tmp_path / "denoise", split=small, mode=mode)
    assert result.metrics["environment"]["train_mode"] == mode
    assert runs.load_json(tmp_path / "denoise" / runs.CONFIG)["noise"] == NOISE

    model = load_model(tmp_path / "denoise" / runs.MODEL).eval()
    clean = to_float(fake_split.test)
    corrupted = build_noise(NOISE)(clean, torch.Generator().manual_seed(7))
    with torch.no_grad():
        rebuilt = model(corrupted)
    to_clean = F.mse_loss(rebuilt, clean).item()
    to_corrupted = F.mse_loss(rebuilt, corrupted).item()
    assert to_clean < 0.5 * to_corrupted, (to_clean, to_corrupted)
    # aetool's own measure of a model under a noise (`aetool corrupt`) says the same.
    measured = evaluate(model, fake_split.test, noise=build_noise(NOISE),
                        generator=torch.Generator().manual_seed(7))
    assert measured == pytest.approx(to_clean, rel=1e-5)
