"""The fast training epochs give the eager losses: mode choice, tuned/compiled CPU paths, fallback.

CUDA-graph checks run only where CUDA is present. Nothing here is timed.
"""

from __future__ import annotations

import copy
import inspect
import warnings

import pytest
import torch

from aetool import fast, training
from aetool.errors import AetoolError
from aetool.model import Autoencoder, load_model

RTOL = 1e-4  # float32 kernels that sum in another order
# A small learning rate keeps these short trajectories well conditioned: at lr 1e-2 early
# training amplifies a 1e-7 change in the weights into a percent of loss within an epoch, so
# two eager runs with different thread counts would already disagree.
LR = 1e-3
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def fresh(ed: int = 4, device: str = "cpu", lr: float = LR):
    torch.manual_seed(0)
    model = Autoencoder(ed).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-5)
    return model, optimizer


def run_epochs(mode, images, *, batch_size=100, epochs=2, noise=None, device="cpu", lrs=None):
    """Per-epoch losses and final weights of `epochs` epochs in `mode`."""
    model, optimizer = fresh(device=device)
    train_epoch = fast.make_train_epoch(model, optimizer, device, mode)
    shuffle = torch.Generator().manual_seed(0)
    noise_generator = training.make_generator(torch.device(device), 1)
    losses = []
    for epoch in range(epochs):
        if lrs is not None:
            for group in optimizer.param_groups:
                group["lr"] = lrs[epoch]
        losses.append(train_epoch(
            model, optimizer, images, batch_size, shuffle, noise, noise_generator
        ))
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return losses, state, train_epoch


def assert_same_training(a, b, rtol=RTOL):
    """Same epoch losses, and weights within a few Adam steps of each other: Adam's update of
    a weight whose gradient is ~0 is ~lr in size and can flip sign on rounding noise."""
    losses_a, state_a = a[0], a[1]
    losses_b, state_b = b[0], b[1]
    assert losses_a == pytest.approx(losses_b, rel=rtol)
    for key in state_a:
        torch.testing.assert_close(state_a[key], state_b[key], rtol=rtol, atol=5 * LR)


def gaussian(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return x + 0.3 * torch.randn(x.shape, generator=generator, device=x.device)


# --------------------------------------------------------------------------- choosing a mode


def test_auto_picks_the_device_s_best_mode():
    assert fast.resolve_mode("auto", "cpu") == "tuned"
    assert fast.resolve_mode("auto", "cuda") == "tuned"
    assert fast.resolve_mode("auto", "mps") == "eager"
    for mode in ("compile", "tuned", "eager"):
        assert fast.resolve_mode(mode, "cpu") == mode


def test_unknown_or_impossible_modes_are_explained():
    with pytest.raises(AetoolError, match="Unknown training mode"):
        fast.resolve_mode("turbo", "cpu")
    with pytest.raises(AetoolError, match="needs a CUDA device"):
        fast.resolve_mode("graph", "cpu")


def test_eager_mode_is_the_reference_loop(fake_split):
    model, optimizer = fresh()
    train_epoch = fast.make_train_epoch(model, optimizer, "cpu", "eager")
    assert train_epoch.mode == "eager"
    assert train_epoch.fn is training.train_epoch


# --------------------------------------------------------------------------- the CPU layer


@pytest.mark.parametrize(
    ("c_in", "c_out", "side", "padding", "output_padding"),
    [(8, 1, 14, 1, 1), (4, 2, 5, 0, 0), (3, 3, 4, 1, 1), (2, 1, 3, 0, 1)],
)
def test_gemm_transposed_convolution_matches_torch_and_its_gradients(
    c_in, c_out, side, padding, output_padding
):
    torch.manual_seed(0)
    x = torch.rand(2, c_in, side, side, dtype=torch.double, requires_grad=True)
    weight = torch.rand(c_in, c_out, 3, 3, dtype=torch.double, requires_grad=True)
    bias = torch.rand(c_out, dtype=torch.double, requires_grad=True)

    def layer(x, weight, bias):
        return fast.SmallOutputConvTranspose.apply(
            x, weight, bias, (padding, padding), (output_padding, output_padding)
        )

    expected = torch.nn.functional.conv_transpose2d(x, weight, bias, 2, padding, output_padding)
    torch.testing.assert_close(layer(x, weight, bias), expected)
    assert torch.autograd.gradcheck(layer, (x, weight, bias))


def test_fast_layers_swap_only_the_small_output_layer_and_can_be_undone():
    torch.manual_seed(0)
    model = Autoencoder(4)
    x = torch.rand(16, 1, 28, 28)
    expected = model(x)
    assert fast.use_fast_cpu_layers(model) == 1  # decoder_conv.4: 8 -> 1 channels
    assert fast.use_fast_cpu_layers(model) == 0  # already done
    assert "forward" in vars(model.decoder_conv[4])
    torch.testing.assert_close(model(x), expected)
    torch.testing.assert_close(copy.deepcopy(model)(x), expected)
    assert set(model.state_dict()) == set(Autoencoder(4).state_dict())
    fast.use_plain_layers(model)
    assert "forward" not in vars(model.decoder_conv[4])


# --------------------------------------------------------------------------- same losses


def test_tuned_mode_gives_the_eager_losses(fake_split):
    eager = run_epochs("eager", fake_split.train)
    tuned = run_epochs("tuned", fake_split.train)
    assert tuned[2].mode == "tuned"
    assert_same_training(tuned, eager)


def test_a_short_last_batch_and_a_noise_give_the_eager_losses(fake_split):
    images = fake_split.train[:450]  # 3 batches of 128 and one of 66
    eager = run_epochs("eager", images, batch_size=128, noise=gaussian)
    tuned = run_epochs("tuned", images, batch_size=128, noise=gaussian)
    assert_same_training(tuned, eager)


def test_compiled_mode_gives_the_eager_losses(fake_split):
    images = fake_split.train[:300]
    eager = run_epochs("eager", images, epochs=1)
    compiled = run_epochs("compile", images, epochs=1)
    assert compiled[2].mode in ("compile", "tuned")  # tuned if this machine cannot compile
    assert_same_training(compiled, eager)


def test_resuming_an_eager_optimizer_state_in_tuned_mode(fake_split):
    """An optimizer state saved by one mode continues in another (what `fit --resume` does)."""
    images = fake_split.train
    model, optimizer = fresh()
    shuffle = torch.Generator().manual_seed(0)
    training.train_epoch(model, optimizer, images, 100, shuffle)
    saved = copy.deepcopy((model.state_dict(), optimizer.state_dict(), shuffle.get_state()))

    def continue_in(mode):
        m, opt = fresh()
        m.load_state_dict(saved[0])
        opt.load_state_dict(saved[1])
        g = torch.Generator()
        g.set_state(saved[2])
        train_epoch = fast.make_train_epoch(m, opt, "cpu", mode)
        return [train_epoch(m, opt, images, 100, g)], m.state_dict()

    assert_same_training(continue_in("tuned"), continue_in("eager"))


def test_tuned_checkpoints_load_as_plain_state_dicts(fake_split, tmp_path):
    model, optimizer = fresh()
    fast.make_train_epoch(model, optimizer, "cpu", "tuned")(
        model, optimizer, fake_split.train, 100, torch.Generator().manual_seed(0)
    )
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    loaded = load_model(path)
    x = fake_split.val[:8].float() / 255
    torch.testing.assert_close(loaded(x), model.eval()(x))


# --------------------------------------------------------------------------- compile fallback


def test_compile_failing_at_once_falls_back_with_a_warning(fake_split, monkeypatch):
    def broken_compile(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken_compile)
    images = fake_split.train[:300]
    with pytest.warns(RuntimeWarning, match="torch.compile failed"):
        compiled = run_epochs("compile", images, epochs=1)
    assert compiled[2].mode == "tuned"
    assert_same_training(compiled, run_epochs("eager", images, epochs=1))


def test_compile_failing_on_first_use_falls_back_once(fake_split, monkeypatch):
    calls = []

    def compile_that_breaks_later(fn, *args, **kwargs):
        def compiled(*a, **k):
            calls.append(1)
            raise RuntimeError("inductor exploded\nlong traceback")

        return compiled

    monkeypatch.setattr(torch, "compile", compile_that_breaks_later)
    images = fake_split.train[:300]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = run_epochs("compile", images, epochs=2)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "inductor exploded" in messages[0]
    assert len(calls) == 1  # not tried again after the failure
    assert_same_training(compiled, run_epochs("eager", images, epochs=2))


def test_fit_takes_a_mode(fake_split):
    if "mode" not in inspect.signature(training.fit).parameters:
        pytest.skip("training.fit has no `mode` parameter yet")
    config = training.preset_config("report", ed=4, max_epochs=2, patience=0, device="cpu")
    eager = training.fit(config, None, split=fake_split, mode="eager")
    tuned = training.fit(config, None, split=fake_split, mode="auto")
    assert [r.train_loss for r in tuned.history] == pytest.approx(
        [r.train_loss for r in eager.history], rel=RTOL
    )
    assert tuned.test_mse == pytest.approx(eager.test_mse, rel=RTOL)


# --------------------------------------------------------------------------- CUDA graphs


def graph_epoch_on_cpu(model, optimizer):
    """A GraphEpoch's bookkeeping without a GPU (capture itself needs CUDA)."""
    epoch = fast.GraphEpoch.__new__(fast.GraphEpoch)
    epoch.device = torch.device("cpu")
    epoch._bind(model, optimizer)
    return epoch


def test_graph_warm_up_is_undone_exactly(fake_split):
    """The warm-up steps before capture leave no trace: parameters and Adam state are back."""
    x = fake_split.train[:100].float() / 255
    model, optimizer = fresh()
    reference_model, reference_optimizer = fresh()
    epoch = graph_epoch_on_cpu(model, optimizer)
    snapshot = epoch._snapshot()
    for _ in range(3):  # what the warm-up does
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), x).backward()
        optimizer.step()
    epoch._restore(snapshot)
    for step_model, step_optimizer in ((model, optimizer), (reference_model, reference_optimizer)):
        step_optimizer.zero_grad()
        torch.nn.functional.mse_loss(step_model(x), x).backward()
        step_optimizer.step()
    for a, b in zip(model.parameters(), reference_model.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_graph_learning_rate_follows_the_param_groups():
    model, optimizer = fresh()
    epoch = graph_epoch_on_cpu(model, optimizer)
    epoch._sync_learning_rates()
    lr_tensor = optimizer.param_groups[0]["lr"]
    assert torch.is_tensor(lr_tensor) and lr_tensor.item() == pytest.approx(LR)
    optimizer.param_groups[0]["lr"] = 0.25  # what fit does every epoch
    epoch._sync_learning_rates()
    assert optimizer.param_groups[0]["lr"] is lr_tensor  # same tensor: no re-capture needed
    assert lr_tensor.item() == 0.25


def test_graph_notices_a_loaded_optimizer_state(fake_split):
    """Loading a state replaces the tensors a captured graph points at: it must re-capture."""
    x = fake_split.train[:100].float() / 255
    model, optimizer = fresh()
    torch.nn.functional.mse_loss(model(x), x).backward()
    optimizer.step()
    epoch = graph_epoch_on_cpu(model, optimizer)
    signature = epoch._signature()
    assert epoch._signature() == signature
    optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    assert epoch._signature() != signature



@CUDA
def test_graph_mode_gives_the_eager_losses(fake_split):
    images = fake_split.train.cuda()  # 500 images: 3 full batches of 128 and 116 eagerly
    lrs = [1e-3, 5e-4, 2e-4]  # a schedule: the lr tensor must follow it without re-capture
    eager = run_epochs("eager", images, batch_size=128, epochs=3, device="cuda", lrs=lrs)
    graph = run_epochs("graph", images, batch_size=128, epochs=3, device="cuda", lrs=lrs)
    assert graph[2].mode == "graph"
    assert_same_training(graph, eager, rtol=1e-3)


@CUDA
def test_graph_mode_with_a_noise(fake_split):
    images = fake_split.train.cuda()
    eager = run_epochs("eager", images, batch_size=100, noise=gaussian, device="cuda")
    graph = run_epochs("graph", images, batch_size=100, noise=gaussian, device="cuda")
    assert_same_training(graph, eager, rtol=1e-3)


@CUDA
def test_graph_mode_recaptures_after_a_state_load(fake_split):
    images = fake_split.train.cuda()
    model, optimizer = fresh(device="cuda")
    train_epoch = fast.make_train_epoch(model, optimizer, "cuda", "graph")
    shuffle = torch.Generator().manual_seed(0)
    train_epoch(model, optimizer, images, 100, shuffle)
    first_graph = train_epoch.graph
    optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    loss = train_epoch(model, optimizer, images, 100, shuffle)
    assert train_epoch.graph is not first_graph
    assert loss == loss  # finite, not NaN


@CUDA
def test_graph_capture_failure_falls_back_with_a_warning(fake_split, monkeypatch):
    def broken_capture(self, *args):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(fast.GraphEpoch, "_capture", broken_capture)
    images = fake_split.train.cuda()
    with pytest.warns(RuntimeWarning, match="CUDA graph capture failed"):
        graph = run_epochs("graph", images, batch_size=100, device="cuda")
    assert graph[2].mode == "tuned"
    assert_same_training(graph, run_epochs("eager", images, batch_size=100, device="cuda"),
                         rtol=1e-3)
