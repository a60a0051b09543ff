"""The fast training epochs give the eager losses: mode choice, tuned/compiled CPU paths,
fallback, and the CUDA-graph mode (its bookkeeping emulated on the CPU, the real thing on CUDA).

Nothing here is timed.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import warnings

import pytest
import torch

from aetool.errors import AetoolError
from aetool.models import Autoencoder, build_model, load_model
from aetool.train import fast
from aetool.train import loop as training

# How close a fast mode must train to eager mode. The modes run the same float32 arithmetic
# summed in other orders (channels-last and GEMM kernels, a fused Adam), so each operation
# differs from eager by a few units in the last place (float32 eps 1.2e-7) and the two
# trajectories part only by rounding. Measured on an AVX-512 CPU (torch 2.14) in 80 runs
# against eager: 30 seeds on 1 thread and 10 on 2 threads, each of the two cases below (500
# images, batch 100, 2 epochs; 450 images, batch 128, a noise), plus 3 seeds of `compile`.
# Epoch losses differed by at most 1.1e-7 relative (one unit in the last place).
LOSS_RTOL = 2e-6  # about 18x the largest difference seen: the README's "about 1e-6"
# Weights are compared against how far training moved them: per tensor, |w - w_eager| over
# |w_eager - w_start| (Frobenius norms). That was at most 4e-6 in 77 of the 80 runs, 3.7e-5
# once, and 1.4e-4 for one seed with a noise (on both thread counts): there a weight whose
# gradient is near zero (its unit nearly dead, so rounding is a sizeable part of it) took a
# different Adam step, since Adam moves every weight by up to ~lr per step whatever the
# gradient's size. 2e-3 leaves 15x over that worst case, for other CPUs' kernels (AVX2 sums
# in other orders again), and still fails a mode that skips or repeats one of the ten Adam
# steps (a gap near 0.1, see the test below), runs Adam with its lr 0.3% off or another eps
# (1e-7), or trains any one tensor another way. The old check, an absolute 5e-3 per weight,
# let through half of the ~1e-2 that ten steps at lr 1e-3 move a weight.
WEIGHT_GAP = 2e-3
# On a 2-core AMD EPYC with AVX2 only (2026-12-03) the 450-image run with a noise gave per-tensor
# gaps of 3.0e-3 (encoder_cnn.4.bias) and 2.7e-3 (encoder_lin.0.bias) on 1 and 2 threads, while
# the whole model's gap (all tensors' differences over all their movement) was 4.3e-4 and the
# epoch losses agreed within LOSS_RTOL. So the whole model must stay within WEIGHT_GAP and each
# tensor within TENSOR_GAP: 3x that worst tensor, still 10x below one Adam step of ten missing.
TENSOR_GAP = 1e-2
# On CUDA (the graph tests) nothing has been measured yet: no GPU was at hand when these
# bounds were set. cuDNN may pick other algorithms per mode, and the graph mode's capturable
# Adam computes its step size on the device; these looser bounds are placeholders, to tighten
# once the differences have been measured on a GPU (benchmarks/gpu_check.sh runs these tests).
CUDA_LOSS_RTOL, CUDA_WEIGHT_GAP = 1e-4, 1e-2
# A small learning rate keeps these short trajectories well conditioned: at lr 1e-2 early
# training amplifies a 1e-7 change in the weights into a percent of loss within an epoch, so
# two eager runs with different thread counts would already disagree.
LR = 1e-3
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def fresh(ed: int = 4, device: str = "cpu", lr: float = LR, model: str = "course"):
    torch.manual_seed(0)
    model = build_model(model, ed, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-5)
    return model, optimizer


def cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}


def run_epochs(mode, images, *, batch_size=100, epochs=2, noise=None, device="cpu", lrs=None,
               model="course"):
    """Per-epoch losses, final weights, the train_epoch function and the initial weights of
    `epochs` epochs in `mode` (a mode name, or a function making a train_epoch from a model
    and an optimizer)."""
    model, optimizer = fresh(device=device, model=model)
    start = cpu_state(model)
    if callable(mode):
        train_epoch = mode(model, optimizer)
    else:
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
    return losses, cpu_state(model), train_epoch, start


def weight_gap(state, reference, start) -> tuple[float, str]:
    """The largest, over tensors, of |state - reference| / |reference - start|, and where."""
    gaps = {
        key: float((state[key] - reference[key]).norm() / (reference[key] - start[key]).norm())
        for key in reference
    }
    worst = max(gaps, key=gaps.get)
    return gaps[worst], worst


def model_gap(state, reference, start) -> float:
    """|state - reference| / |reference - start| over all tensors together (Frobenius)."""
    off = sum(float((state[k] - reference[k]).norm()) ** 2 for k in reference)
    moved = sum(float((reference[k] - start[k]).norm()) ** 2 for k in reference)
    return (off / moved) ** 0.5


def assert_same_training(a, b, loss_rtol=LOSS_RTOL, max_gap=WEIGHT_GAP):
    """Same epoch losses within `loss_rtol`, the whole model within `max_gap` of the distance
    training moved it and every tensor within TENSOR_GAP (or `max_gap` when looser; see
    WEIGHT_GAP). `b` is the reference; both start alike."""
    losses_a, state_a, start = a[0], a[1], a[3]
    losses_b, state_b = b[0], b[1]
    assert all(math.isfinite(x) for x in losses_a + losses_b)
    assert losses_a == pytest.approx(losses_b, rel=loss_rtol, abs=0)
    for key in start:
        assert torch.equal(start[key], b[3][key]), "the runs must start from the same weights"
    gap, where = weight_gap(state_a, state_b, start)
    assert gap <= max(TENSOR_GAP, max_gap), \
        f"{where} trained {gap:.2e} of its movement away from the reference"
    overall = model_gap(state_a, state_b, start)
    assert overall <= max_gap, f"the model trained {overall:.2e} of its movement away"


def test_the_weight_check_sees_one_adam_step_of_ten_missing(fake_split):
    """WEIGHT_GAP is tight enough to tell ten Adam steps from nine."""
    x = fake_split.train[:100].float() / 255
    model, optimizer = fresh()
    start, states = cpu_state(model), []
    for _ in range(10):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), x).backward()
        optimizer.step()
        states.append(cpu_state(model))
    assert weight_gap(states[8], states[9], start)[0] > 10 * TENSOR_GAP
    assert model_gap(states[8], states[9], start) > 10 * WEIGHT_GAP


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
    """Compile mode really compiles here, and trains as eager does. Where torch.compile cannot
    work (no C compiler, an unsupported platform) the mode falls back to `tuned`, which other
    tests cover: then this test skips, naming the reason, and in CI (CI=true) it fails."""
    from torch._dynamo.utils import counters

    images = fake_split.train[:300]
    eager = run_epochs("eager", images, epochs=1)
    counters.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = run_epochs("compile", images, epochs=1)
    fallbacks = [str(w.message) for w in caught if "torch.compile failed" in str(w.message)]
    if fallbacks:
        message = f"compile mode fell back to tuned, so it was not tested: {fallbacks[0]}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    assert compiled[2].mode == "compile"
    assert counters["frames"]["ok"] >= 1, "torch.compile was never run"
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
        # A copy each: load_state_dict keeps the tensors it is given, so the first run would
        # otherwise advance the Adam state (step counts, moments) the second one starts from.
        opt.load_state_dict(copy.deepcopy(saved[1]))
        g = torch.Generator()
        g.set_state(saved[2])
        train_epoch = fast.make_train_epoch(m, opt, "cpu", mode)
        return [train_epoch(m, opt, images, 100, g)], cpu_state(m), train_epoch, start

    start = {k: v.detach().clone() for k, v in saved[0].items()}

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
    config = training.preset_config("report", ed=4, max_epochs=2, patience=0, device="cpu")
    eager = training.fit(config, None, split=fake_split, mode="eager")
    tuned = training.fit(config, None, split=fake_split, mode="auto")
    assert [r.train_loss for r in tuned.history] == pytest.approx(
        [r.train_loss for r in eager.history], rel=LOSS_RTOL, abs=0
    )
    assert tuned.test_mse == pytest.approx(eager.test_mse, rel=LOSS_RTOL, abs=0)
    modes = [r.metrics["environment"]["train_mode"] for r in (eager, tuned)]
    assert modes == ["eager", "tuned"]  # the comparison is not of eager with itself


# --------------------------------------------------------------------------- CUDA graphs


def cpu_graph_epoch(model, optimizer):
    """A GraphEpoch on the CPU (its constructor insists on CUDA): its bookkeeping runs as it
    is; capturing and replaying need `emulated_graphs` below."""
    epoch = fast.GraphEpoch.__new__(fast.GraphEpoch)
    epoch.device = torch.device("cpu")
    epoch.total = torch.zeros(())
    epoch._bind(model, optimizer)
    return epoch


def test_graph_warm_up_is_undone_exactly(fake_split):
    """The warm-up steps before capture leave no trace: parameters and Adam state are back."""
    x = fake_split.train[:100].float() / 255
    model, optimizer = fresh()
    reference_model, reference_optimizer = fresh()
    epoch = cpu_graph_epoch(model, optimizer)
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
    epoch = cpu_graph_epoch(model, optimizer)
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
    epoch = cpu_graph_epoch(model, optimizer)
    signature = epoch._signature()
    assert epoch._signature() == signature
    optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    assert epoch._signature() != signature


# ---- the whole graph mode on the CPU
#
# A CUDA graph cannot be captured on the CPU, but everything GraphEpoch does around it can
# run there: the warm-up and its undoing, the static input buffers, the learning rate as a
# tensor, the loss total kept on the device, the eager last batch, and re-capturing when the
# batch size, the noise setting or the optimizer's tensors change. `emulated_graphs` stands
# in for torch.cuda's streams and graphs, faithfully to what a graph does:
# - capturing runs nothing: the emulated capture runs the step once to record it, then puts
#   back every value it changed (parameters, optimizer state, the total);
# - a replay runs the recorded step again. A captured backward that began with no gradients
#   writes them anew on every replay, so those gradients are cleared before each replay;
# - a graph holds the memory addresses it was captured with: a replay after any tensor the
#   step reads or writes was replaced (a new lr tensor, a loaded optimizer state, a new
#   buffer) would silently use the old memory on a GPU, so here it fails the test.
# What the CPU cannot show: capturable Adam's arithmetic (CUDA only; here the graph mode's
# optimizer runs torch's single-tensor Adam, which takes the lr tensor as well) and Python
# values baked into a real capture. The @CUDA tests below cover those on a GPU.


def step_memory(epoch) -> dict[str, int]:
    """The address of every tensor the captured step reads or writes (gradients aside: they
    live in the graph's own pool)."""
    memory = {"total": epoch.total.data_ptr()}
    memory.update({f"static {k}": v.data_ptr() for k, v in epoch.static.items()})
    for g, group in enumerate(epoch.optimizer.param_groups):
        lr = group["lr"]
        memory[f"lr {g}"] = lr.data_ptr() if torch.is_tensor(lr) else f"float {lr}"
        for i, param in enumerate(group["params"]):
            memory[f"param {g}.{i}"] = param.data_ptr()
            for key, value in epoch.optimizer.state.get(param, {}).items():
                if torch.is_tensor(value):
                    memory[f"{key} {g}.{i}"] = value.data_ptr()
    return memory


def step_values(epoch) -> list[tuple[torch.Tensor, torch.Tensor]]:
    tensors = [epoch.total, *(p for g in epoch.optimizer.param_groups for p in g["params"])]
    tensors += [v for state in epoch.optimizer.state.values() for v in state.values()
                if torch.is_tensor(v)]
    return [(t, t.detach().clone()) for t in tensors]


class EmulatedGraph:
    """torch.cuda.CUDAGraph on the CPU: `replay` runs the recorded step again."""

    def __init__(self) -> None:
        self.step = None  # (epoch, args, parameters whose gradients each replay writes anew)
        self.run = None  # GraphEpoch._captured_step
        self.memory: dict[str, int] = {}
        self.replays = 0

    def replay(self) -> None:
        epoch, args, fresh_gradients = self.step
        stale = {k for k, v in step_memory(epoch).items() if self.memory.get(k) != v}
        assert not stale, f"a replay would use memory the step no longer uses: {sorted(stale)}"
        for param in fresh_gradients:
            param.grad = None
        self.run(epoch, *args)
        self.replays += 1


@contextlib.contextmanager
def emulated_graphs(monkeypatch):
    """torch.cuda's streams and graphs as CPU stand-ins; yields the list of captured graphs."""
    captured: list[EmulatedGraph] = []
    recording: list[EmulatedGraph] = []
    real_step = fast.GraphEpoch._captured_step

    class Stream:
        def __init__(self, device=None) -> None:
            pass

        def wait_stream(self, other) -> None:
            pass

    @contextlib.contextmanager
    def capture(graph, **kwargs):
        recording.append(graph)
        try:
            yield
        finally:
            recording.remove(graph)
        epoch = graph.step[0]
        for tensor, value in graph.values:  # capturing runs nothing
            with torch.no_grad():
                tensor.copy_(value)
        graph.memory = step_memory(epoch)
        captured.append(graph)

    def recording_step(self, *args):
        graph = recording[-1]
        fresh = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is None]
        graph.step, graph.run, graph.values = (self, args, fresh), real_step, step_values(self)
        state_before = {id(p): set(s) for p, s in self.optimizer.state.items()}
        real_step(self, *args)
        state_after = {id(p): set(s) for p, s in self.optimizer.state.items()}
        assert state_after == state_before, "the warm-up must create the optimizer state"

    def cpu_optimizer(optimizer, *, fused=False, capturable=False):
        # CPU Adam has no capturable kernel; its single-tensor kernel also reads the lr tensor
        assert capturable and not fused
        for group in optimizer.param_groups:
            group["fused"], group["foreach"], group["capturable"] = None, False, False

    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream())
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", EmulatedGraph)
    monkeypatch.setattr(torch.cuda, "graph", capture)
    monkeypatch.setattr(fast.GraphEpoch, "_captured_step", recording_step)
    monkeypatch.setattr(fast.graph, "configure_optimizer", cpu_optimizer)  # where graph looks
    yield captured


# Emulated graph mode and eager mode run the same kernels on the same batches in the same
# order and differ only in the lr (a float32 tensor: 1e-3 rounded by 5e-8) and the loss total
# (kept in another tensor): over 6 seeds of the two cases below the losses agreed to 1.1e-7
# and the weights to 1.6e-6 of their movement, so the fast modes' bounds fit them too.


def test_emulated_graph_mode_gives_the_eager_losses_with_a_schedule(fake_split, monkeypatch):
    images = fake_split.train  # 500 images: 3 full batches of 128, then 116 eagerly
    lrs = [1e-3, 5e-4, 2e-4]  # a schedule: the lr tensor must follow it without re-capture
    eager = run_epochs("eager", images, batch_size=128, epochs=3, lrs=lrs)
    with emulated_graphs(monkeypatch) as captured:
        graph = run_epochs(cpu_graph_epoch, images, batch_size=128, epochs=3, lrs=lrs)
    assert graph[2].mode == "graph" and len(captured) == 1
    assert captured[0].replays == 9  # every full batch of every epoch, from one capture
    assert_same_training(graph, eager)


@pytest.mark.parametrize("model", ["course", "wide:width=8,hidden=64"])
def test_emulated_graph_mode_for_every_built_in_model(model, fake_split, monkeypatch):
    """The graph mode's bookkeeping works for any model, not just the course one."""
    images = fake_split.train[:450]
    eager = run_epochs("eager", images, batch_size=128, model=model)
    with emulated_graphs(monkeypatch) as captured:
        graph = run_epochs(cpu_graph_epoch, images, batch_size=128, model=model)
    assert graph[2].mode == "graph" and len(captured) == 1 and captured[0].replays == 6
    # A bias right before a GroupNorm of one channel per group (wide's 8-channel layers at
    # width 8) does not change the output at all: its gradient is rounding noise, so Adam
    # steps it at random in either mode. Those are left out of the weight check; everything
    # else is held to it.
    inert = [k for k in inert_parameters(model, images[:128]) if k.endswith(".bias")]
    keep = [k for k in graph[3] if k not in inert]
    assert len(keep) >= len(graph[3]) - 3  # at most the biases of wide's 8-channel layers
    assert_same_training(*(tuple([r[0], {k: r[1][k] for k in keep}, r[2],
                                  {k: r[3][k] for k in keep}]) for r in (graph, eager)))


def inert_parameters(spec: str, images: torch.Tensor) -> list[str]:
    """Parameters whose gradient is zero up to rounding: the output does not depend on them."""
    model, _ = fresh(model=spec)
    clean = images.float() / 255
    torch.nn.functional.mse_loss(model(clean), clean).backward()
    grads = {k: p.grad.abs().max().item() for k, p in model.named_parameters()}
    scale = max(grads.values())
    return [k for k, g in grads.items() if g < 1e-6 * scale]


def test_emulated_graph_mode_with_a_noise(fake_split, monkeypatch):
    images = fake_split.train[:450]  # 3 batches of 128 and one of 66
    eager = run_epochs("eager", images, batch_size=128, noise=gaussian)
    with emulated_graphs(monkeypatch) as captured:
        graph = run_epochs(cpu_graph_epoch, images, batch_size=128, noise=gaussian)
    assert len(captured) == 1 and captured[0].replays == 6
    assert_same_training(graph, eager)


def test_emulated_graph_mode_recaptures_when_its_tensors_change(fake_split, monkeypatch):
    """A loaded optimizer state, another batch size or a noise each need a new graph, and the
    training after them is still eager's."""
    images = fake_split.train

    def train(train_epoch_for):
        model, optimizer = fresh()
        start = cpu_state(model)
        train_epoch = train_epoch_for(model, optimizer)
        shuffle = torch.Generator().manual_seed(0)
        noise_generator = torch.Generator().manual_seed(1)
        losses = [train_epoch(model, optimizer, images, 100, shuffle)]
        optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # what --resume does
        losses.append(train_epoch(model, optimizer, images, 100, shuffle))
        losses.append(train_epoch(model, optimizer, images, 128, shuffle))
        losses.append(train_epoch(model, optimizer, images, 128, shuffle, gaussian,
                                  noise_generator))
        return losses, cpu_state(model), train_epoch, start

    eager = train(lambda model, optimizer: fast.make_train_epoch(model, optimizer, "cpu", "eager"))
    with emulated_graphs(monkeypatch) as captured:
        graph = train(cpu_graph_epoch)
    assert [g.replays for g in captured] == [5, 5, 3, 3]
    assert_same_training(graph, eager)


@CUDA
def test_graph_mode_gives_the_eager_losses(fake_split):
    images = fake_split.train.cuda()  # 500 images: 3 full batches of 128 and 116 eagerly
    lrs = [1e-3, 5e-4, 2e-4]  # a schedule: the lr tensor must follow it without re-capture
    eager = run_epochs("eager", images, batch_size=128, epochs=3, device="cuda", lrs=lrs)
    graph = run_epochs("graph", images, batch_size=128, epochs=3, device="cuda", lrs=lrs)
    assert graph[2].mode == "graph"
    assert_same_training(graph, eager, CUDA_LOSS_RTOL, CUDA_WEIGHT_GAP)


@CUDA
def test_graph_mode_with_a_noise(fake_split):
    images = fake_split.train.cuda()
    eager = run_epochs("eager", images, batch_size=100, noise=gaussian, device="cuda")
    graph = run_epochs("graph", images, batch_size=100, noise=gaussian, device="cuda")
    assert_same_training(graph, eager, CUDA_LOSS_RTOL, CUDA_WEIGHT_GAP)


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
    assert math.isfinite(loss)  # not NaN, not infinite


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
                         CUDA_LOSS_RTOL, CUDA_WEIGHT_GAP)
