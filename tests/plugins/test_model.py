"""The course architecture: shapes, parameter counts, and the report's own checkpoints."""

from __future__ import annotations

import pytest
import torch

from aetool.errors import AetoolError
from aetool.models import Autoencoder, count_parameters, load_model
from aetool.train.loop import evaluate

SEED_KEYS = {
    f"{block}.{i}.{p}"
    for block, idx in (("encoder_cnn", (0, 2, 4)), ("encoder_lin", (0, 2)),
                       ("decoder_lin", (0, 2)), ("decoder_conv", (0, 2, 4)))
    for i in idx for p in ("weight", "bias")
}


@pytest.mark.parametrize("ed", [1, 4, 32])
def test_shapes(ed):
    model = Autoencoder(ed)
    x = torch.rand(7, 1, 28, 28)
    z = model.encode(x)
    assert z.shape == (7, ed)
    y = model(x).detach()
    assert y.shape == x.shape
    assert float(y.min()) >= 0 and float(y.max()) <= 1


def test_parameter_counts_and_keys_match_the_report():
    assert count_parameters(Autoencoder(4)) == 49_541
    assert count_parameters(Autoencoder(32)) == 53_153
    assert set(Autoencoder(8).state_dict()) == SEED_KEYS


def test_bad_encoding_dimension():
    with pytest.raises(AetoolError, match="at least 1"):
        Autoencoder(0)


def test_checkpoint_errors(tmp_path):
    with pytest.raises(AetoolError, match="does not exist"):
        load_model(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"garbage")
    with pytest.raises(AetoolError, match="cannot be read safely"):
        load_model(tmp_path / "junk.pt")
    torch.save(Autoencoder(8).state_dict(), tmp_path / "ed8.pt")
    assert load_model(tmp_path / "ed8.pt").encoding_dim == 8
    with pytest.raises(AetoolError, match="encoding dimension 8, not 4"):
        load_model(tmp_path / "ed8.pt", 4)


def test_one_loader_reads_any_model_and_the_old_one_is_a_deprecated_alias(tmp_path):
    """`load_model` is the one checkpoint loader (issue 22): the course model with its ED read
    off the file, any other model by its spec; `load_weights` only forwards to it."""
    from aetool.models import build_model, load_weights

    spec = "wide:width=8,hidden=64"
    torch.save(build_model(spec, 3).state_dict(), tmp_path / "wide.pt")
    wide = load_model(tmp_path / "wide.pt", 3, model=spec)
    assert not wide.training and wide.encode(torch.rand(2, 1, 28, 28)).shape == (2, 3)
    with pytest.raises(AetoolError, match="Give the encoding dimension"):
        load_model(tmp_path / "wide.pt", model=spec)
    with pytest.raises(AetoolError, match="does not hold the weights of a 'course' model"):
        load_model(tmp_path / "wide.pt", 3)
    torch.save(Autoencoder(8).state_dict(), tmp_path / "ed8.pt")
    with pytest.raises(AetoolError, match="encoding dimension 8, not 4"):
        load_model(tmp_path / "ed8.pt", 4, model="course")
    with pytest.warns(DeprecationWarning, match="load_weights is deprecated"):
        old = load_weights(None, 8, tmp_path / "ed8.pt")
    assert old.encoding_dim == 8 and not old.training


def test_pickled_code_is_never_run(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(AetoolError, match="cannot be read safely"):
        load_model(tmp_path / "evil.pt")


@pytest.mark.parametrize("name, ed", [("net_params_4.pth", 4), ("net_params_32.pth", 32)])
def test_seed_checkpoints_load_unchanged(seed_checkpoints, name, ed):
    model = load_model(seed_checkpoints / name)
    assert model.encoding_dim == ed
    assert set(model.state_dict()) == SEED_KEYS


def test_seed_checkpoint_reaches_the_report_test_mse(seed_checkpoints, real_mnist):
    model = load_model(seed_checkpoints / "net_params_4.pth")
    assert evaluate(model, real_mnist.test_images) == pytest.approx(0.02696, abs=2e-5)
