"""Fast training epochs: the step of `steps.train_epoch`, run the quickest way a device allows.

`make_train_epoch(model, optimizer, device, mode)` returns a function with the signature and
meaning of `steps.train_epoch` (one pass over the images in the seeded random order, the
mean training loss back), so the training loop can swap one for the other. Every mode computes
the same losses as eager mode within float tolerance; only the kernels and their scheduling
differ.

Modes:
- `eager`: `steps.train_epoch` itself, unchanged: the reference, and the one to debug with.
- `tuned`: eager kernels with the device's cheap wins. On the CPU: channels-last parameters
  (oneDNN's fast path for the transposed convolutions), a GEMM-based forward for transposed
  convolutions with few output channels (`SmallOutputConvTranspose`; oneDNN is slowest
  there), and the fused Adam kernel. On CUDA and MPS: the fused Adam kernel.
- `compile`: `torch.compile` of forward + loss on top of `tuned` (full batches only). If
  compilation fails it warns once and carries on in `tuned` mode.
- `graph` (CUDA only): the whole step (forward, backward, Adam with `capturable=True` and the
  learning rate in a device tensor) captured once in a CUDA graph and replayed for every full
  batch; batches are gathered from the device-resident images into a static buffer, and a last
  partial batch runs eagerly.
- `auto`: `tuned` on CUDA and the CPU, `eager` on MPS. (`graph` becomes the CUDA default once
  `tests/test_fast.py -k graph` and `benchmarks/speed.py` have been run on a GPU.) On a
  2-core CPU `tuned` trained about 1.45x faster than `eager` and `compile` was slower than
  `tuned` (and compiles for 10-30 s), see benchmarks/README.md.

The modes other than `eager` adjust the optimizer they are given (its `fused`, `foreach` and
`capturable` flags, and the device of its step counters), and `tuned` on the CPU converts the
model's 4-d parameters to channels-last and swaps the forward of its small-output transposed
convolutions, in place (`use_plain_layers` undoes the latter). Values, parameter objects and
`state_dict` keys are untouched, so checkpoints and optimizer states load in any mode.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from aetool.data import to_float
from aetool.errors import AetoolError
from aetool.steps import NoiseFn, train_epoch

MODES = ("auto", "graph", "compile", "tuned", "eager")

# train_epoch(model, optimizer, images, batch_size, shuffle, noise=None, noise_generator=None)
TrainEpochFn = Callable[..., float]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def resolve_mode(mode: str, device: torch.device | str) -> str:
    """The concrete mode `mode` means on `device`; explains modes the device cannot run."""
    device = torch.device(device)
    if mode not in MODES:
        raise AetoolError(f"Unknown training mode {mode!r}; choose one of: {', '.join(MODES)}.")
    if mode == "auto":
        # `graph` is opt-in until it has been checked on a GPU (tests/test_fast.py -k graph).
        return {"cuda": "tuned", "cpu": "tuned"}.get(device.type, "eager")
    if mode == "graph" and device.type != "cuda":
        raise AetoolError(f"Training mode 'graph' needs a CUDA device, not {device.type}.")
    return mode


def make_train_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device | str,
    mode: str = "auto",
) -> TrainEpochFn:
    """A drop-in for `steps.train_epoch`, prepared for `model` and `optimizer` on `device`.

    The returned function has a `mode` attribute naming the mode it runs. It may be called with
    other model or optimizer objects; it then prepares again for those.
    """
    device = torch.device(device)
    mode = resolve_mode(mode, device)
    if mode == "eager":

        return _Named(train_epoch, "eager")
    if mode == "graph":
        return GraphEpoch(model, optimizer, device)
    return EagerEpoch(model, optimizer, device, compile_model=(mode == "compile"))


class _Named:
    """A function with a `mode` attribute."""

    def __init__(self, fn: TrainEpochFn, mode: str) -> None:
        self.fn, self.mode = fn, mode

    def __call__(self, *args: Any, **kwargs: Any) -> float:
        return self.fn(*args, **kwargs)


# --------------------------------------------------------------------------- optimizer set-up


def fused_supported(device: torch.device) -> bool:
    """Whether torch has a fused Adam kernel for this device type."""
    try:
        from torch.optim.optimizer import _get_fused_kernels_supported_devices

        return device.type in _get_fused_kernels_supported_devices()
    except ImportError:  # an older or newer torch without the helper
        return device.type == "cuda"


def configure_optimizer(
    optimizer: torch.optim.Optimizer, *, fused: bool = False, capturable: bool = False
) -> None:
    """Switch an Adam-family optimizer between its implementations (values are kept).

    Step counters move to the parameter's device as float32 when the fused or capturable
    implementation needs them there, and back to the CPU otherwise, as Adam itself does.
    """
    for group in optimizer.param_groups:
        if fused:
            group["fused"], group["foreach"], group["capturable"] = True, False, False
        elif capturable:
            group["fused"], group["foreach"], group["capturable"] = None, True, True
        else:
            group["fused"], group["foreach"], group["capturable"] = None, None, False
        for p in group["params"]:
            step = optimizer.state.get(p, {}).get("step")
            if not torch.is_tensor(step):
                continue
            if fused or capturable:
                moved = step.to(device=p.device, dtype=torch.float32)
            else:
                moved = step.to(device="cpu")
            if moved is not step:
                optimizer.state[p]["step"] = moved


def _is_adam_family(optimizer: torch.optim.Optimizer) -> bool:
    return all(k in optimizer.defaults for k in ("capturable", "fused", "foreach"))


def _to_channels_last(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Channels-last 4-d parameters (in place, same Parameter objects) and optimizer state."""
    model.to(memory_format=torch.channels_last)
    for p in model.parameters():
        if p.dim() != 4:
            continue
        if p.grad is not None and not p.grad.is_contiguous(memory_format=torch.channels_last):
            p.grad = None
        state = optimizer.state.get(p, {})
        for key, value in list(state.items()):
            if torch.is_tensor(value) and value.shape == p.shape:
                state[key] = value.contiguous(memory_format=torch.channels_last)


def _reconstruction_loss(model: torch.nn.Module) -> LossFn:
    def loss(inputs: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(model(inputs), clean)

    return loss


# --------------------------------------------------------------------------- CPU layers

SMALL_OUTPUT_CHANNELS = 4  # transposed convolutions with at most this many outputs get the GEMM


class SmallOutputConvTranspose(torch.autograd.Function):
    """A stride-2, 3x3 transposed convolution with few output channels, for the CPU.

    oneDNN runs such a layer (the decoder's last, 8 -> 1 channels) at a fraction of its speed
    elsewhere, in both directions. Forward here is one GEMM (every input pixel times every
    tap) and nine strided adds; backward uses the two fast oneDNN primitives: a plain strided
    convolution for the input's gradient and the weight-gradient kernel. Same arithmetic as
    `F.conv_transpose2d`, summed in another order.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        padding: tuple[int, int],
        output_padding: tuple[int, int],
    ) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        ctx.padding, ctx.output_padding = padding, output_padding
        return conv_transpose_gemm(x, weight, bias, padding, output_padding)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = F.conv2d(grad, weight, None, 2, ctx.padding)
        _, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
            grad, x, weight, [weight.shape[1]], [2, 2], list(ctx.padding), [1, 1], True,
            list(ctx.output_padding), 1,
            [False, ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]],
        )
        return grad_x, grad_weight, grad_bias, None, None


def conv_transpose_gemm(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    padding: tuple[int, int],
    output_padding: tuple[int, int],
) -> torch.Tensor:
    """`F.conv_transpose2d(x, weight, bias, stride=2, padding, output_padding)` for 3x3 kernels,
    as a GEMM and nine strided adds; the result is channels-last."""
    n, c, h, w = x.shape
    out_c = weight.shape[1]
    (ph, pw), (oph, opw) = padding, output_padding
    out_h, out_w = 2 * h + 1 - 2 * ph + oph, 2 * w + 1 - 2 * pw + opw
    taps = x.permute(0, 2, 3, 1).reshape(n * h * w, c) @ weight.reshape(c, out_c * 9)
    taps = taps.view(n, h, w, out_c, 3, 3)
    full = torch.zeros(n, 2 * h + 2, 2 * w + 2, out_c, dtype=x.dtype, device=x.device)
    for ky in range(3):
        for kx in range(3):
            full[:, ky : ky + 2 * h : 2, kx : kx + 2 * w : 2, :] += taps[..., ky, kx]
    out = full[:, ph : ph + out_h, pw : pw + out_w, :]
    out = out + bias if bias is not None else out.contiguous()
    return out.permute(0, 3, 1, 2)


def _fast_conv_transpose_forward(
    module: torch.nn.ConvTranspose2d, x: torch.Tensor, output_size: list[int] | None = None
) -> torch.Tensor:
    if output_size is not None or x.device.type != "cpu" or x.dim() != 4:
        return torch.nn.ConvTranspose2d.forward(module, x, output_size)
    return SmallOutputConvTranspose.apply(
        x, module.weight, module.bias, tuple(module.padding), tuple(module.output_padding)
    )


def _small_output_conv_transpose(module: torch.nn.Module) -> bool:
    return (
        type(module) is torch.nn.ConvTranspose2d
        and module.stride == (2, 2)
        and module.kernel_size == (3, 3)
        and module.dilation == (1, 1)
        and module.groups == 1
        and module.padding_mode == "zeros"
        and module.out_channels <= SMALL_OUTPUT_CHANNELS
    )


def use_fast_cpu_layers(model: torch.nn.Module) -> int:
    """Give the model's small-output transposed convolutions the GEMM forward (in place; the
    parameters and state_dict stay as they are). Returns how many layers were changed."""
    changed = 0
    for module in model.modules():
        if _small_output_conv_transpose(module) and "forward" not in vars(module):
            module.forward = functools.partial(_fast_conv_transpose_forward, module)
            changed += 1
    return changed


def use_plain_layers(model: torch.nn.Module) -> None:
    """Undo `use_fast_cpu_layers`."""
    for module in model.modules():
        forward = vars(module).get("forward")
        if isinstance(forward, functools.partial) and forward.func is _fast_conv_transpose_forward:
            del module.forward


# --------------------------------------------------------------------------- tuned / compile


class EagerEpoch:
    """`tuned` and `compile` modes: the reference loop with tuned kernels, maybe compiled."""

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        device: torch.device,
        compile_model: bool = False,
        fast_layers: bool = True,
        fused_adam: bool = True,
    ) -> None:
        self.device = device
        self.fast_layers = fast_layers
        self.fused_adam = fused_adam
        self.compile_model = compile_model
        self.mode = "compile" if compile_model else "tuned"
        self.model: torch.nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._prepare(model, optimizer)

    def _prepare(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model, self.optimizer = model, optimizer
        self.eager_loss = _reconstruction_loss(model)
        self.loss = self.eager_loss
        if self.compile_model:
            try:
                self.loss = torch.compile(self.eager_loss)
            except Exception as exc:  # noqa: BLE001 - any failure means: run eagerly
                self._give_up_compiling(exc)

    def _give_up_compiling(self, exc: BaseException) -> None:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        warnings.warn(
            f"torch.compile failed ({type(exc).__name__}: {first}); training continues "
            "without compilation (mode 'tuned').",
            RuntimeWarning,
            stacklevel=3,
        )
        self.loss = self.eager_loss
        self.compile_model = False
        self.mode = "tuned"

    def _loss_and_backward(
        self, inputs: torch.Tensor, clean: torch.Tensor, full: bool
    ) -> torch.Tensor:
        optimizer = self.optimizer
        if full and self.loss is not self.eager_loss:
            try:
                loss = self.loss(inputs, clean)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                return loss
            except Exception as exc:  # noqa: BLE001 - compilation errors surface on first use
                self._give_up_compiling(exc)
        loss = self.eager_loss(inputs, clean)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        return loss

    def __call__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        images: torch.Tensor,
        batch_size: int,
        shuffle: torch.Generator,
        noise: NoiseFn | None = None,
        noise_generator: torch.Generator | None = None,
    ) -> float:
        if model is not self.model or optimizer is not self.optimizer:
            self._prepare(model, optimizer)
        # Every call, so that states loaded in between (a resumed run) are adapted as well.
        if images.device.type == "cpu":
            _to_channels_last(model, optimizer)
            if self.fast_layers:
                use_fast_cpu_layers(model)
        if _is_adam_family(optimizer):
            configure_optimizer(optimizer, fused=self.fused_adam and fused_supported(images.device))

        return train_epoch(model, optimizer, images, batch_size, shuffle, noise,
                           noise_generator, backward=self._loss_and_backward)


# --------------------------------------------------------------------------- CUDA graph


class GraphEpoch:
    """`graph` mode: one CUDA graph holds a whole training step and is replayed per batch.

    Following PyTorch's whole-network capture recipe: a few warm-up steps on a side stream
    (so that cuDNN picks its algorithms and Adam creates its state), then the step is captured
    with gradients set to None, so that backward allocates them inside the graph's memory pool
    and every replay overwrites them. The warm-up steps are undone (parameters and optimizer
    state restored), so a graph run follows the eager run step for step.

    Inputs enter through static buffers: without noise, the batch's uint8 images are gathered
    into one with `index_select(..., out=)` and converted inside the graph; with a noise, the
    clean and corrupted float batches are computed eagerly (noises may draw random numbers
    from their own generator) and copied in. The learning rate lives in a device tensor that
    each call refreshes from the optimizer's param groups, so schedules need no re-capture.
    The graph is captured again when the batch size, the noise setting, or the identity of the
    parameters or optimizer-state tensors change (e.g. after `optimizer.load_state_dict`).
    If capturing fails (a model with an operation that cannot be captured), it warns once and
    carries on in `tuned` mode.
    """

    WARMUP_STEPS = 3

    def __init__(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, device: torch.device
    ) -> None:
        if device.type != "cuda":
            raise AetoolError(f"Training mode 'graph' needs a CUDA device, not {device.type}.")
        if not _is_adam_family(optimizer):
            raise AetoolError(
                f"Training mode 'graph' needs Adam or AdamW, not {type(optimizer).__name__}."
            )
        self.device = device
        self.total = torch.zeros((), device=device)
        self._bind(model, optimizer)

    def _bind(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model, self.optimizer = model, optimizer
        self.graph: torch.cuda.CUDAGraph | None = None
        self.key: tuple[Any, ...] | None = None
        self.signature: tuple[int, ...] = ()
        self.lr_tensors: list[torch.Tensor] = []
        self.static: dict[str, torch.Tensor] = {}
        self.fallback: EagerEpoch | None = None
        self.mode = "graph"

    # ---- optimizer state

    def _sync_learning_rates(self) -> None:
        """Give each param group a device lr tensor holding its current value."""
        groups = self.optimizer.param_groups
        if len(self.lr_tensors) != len(groups):
            self.lr_tensors = [
                torch.tensor(float(g["lr"]), device=self.device, dtype=torch.float32)
                for g in groups
            ]
        for group, lr in zip(groups, self.lr_tensors, strict=True):
            if group["lr"] is not lr:
                lr.fill_(float(group["lr"]))
                group["lr"] = lr

    def _signature(self) -> tuple[int, ...]:
        ptrs = []
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                ptrs.append(p.data_ptr())
                for value in self.optimizer.state.get(p, {}).values():
                    if torch.is_tensor(value):
                        ptrs.append(value.data_ptr())
        return tuple(ptrs)

    def _snapshot(self) -> tuple[list[torch.Tensor], dict[torch.Tensor, dict[str, torch.Tensor]]]:
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        values = [p.detach().clone() for p in params]
        state = {
            p: {k: v.clone() for k, v in self.optimizer.state[p].items() if torch.is_tensor(v)}
            for p in params
            if self.optimizer.state.get(p)
        }
        return values, state

    def _restore(self, snapshot: tuple[list[torch.Tensor], dict]) -> None:
        values, state = snapshot
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        with torch.no_grad():
            for p, v in zip(params, values, strict=True):
                p.copy_(v)
            for p in params:
                saved = state.get(p)
                for key, value in self.optimizer.state.get(p, {}).items():
                    if not torch.is_tensor(value):
                        continue
                    if saved is not None and key in saved:
                        value.copy_(saved[key])
                    else:  # state the warm-up created: Adam's fresh state is all zeros
                        value.zero_()

    # ---- capture

    def _step_body(self, with_noise: bool) -> torch.Tensor:
        if with_noise:
            inputs, clean = self.static["inputs"], self.static["clean"]
        else:
            clean = to_float(self.static["images"])
            inputs = clean
        return F.mse_loss(self.model(inputs), clean)

    def _captured_step(self, batch_size: int, with_noise: bool) -> None:
        """The step the graph holds: forward, backward, Adam, and the loss added to the total.
        (A method of its own, so that tests can replay it on the CPU, tests/test_fast.py.)"""
        loss = self._step_body(with_noise)
        loss.backward()
        self.optimizer.step()
        self.total.add_(loss.detach() * batch_size)

    def _capture(self, images: torch.Tensor, batch_size: int, with_noise: bool) -> None:
        shape = (batch_size, *images.shape[1:])
        self.static = {"images": torch.zeros(shape, dtype=images.dtype, device=self.device)}
        if with_noise:
            self.static["inputs"] = torch.zeros(shape, device=self.device)
            self.static["clean"] = torch.zeros(shape, device=self.device)
        self.graph = None
        optimizer = self.optimizer
        snapshot = self._snapshot()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(self.WARMUP_STEPS):
                optimizer.zero_grad(set_to_none=True)
                self._step_body(with_noise).backward()
                optimizer.step()
        torch.cuda.current_stream(self.device).wait_stream(side)
        self._restore(snapshot)
        optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._captured_step(batch_size, with_noise)
        self.graph = graph
        self.key = (batch_size, with_noise, images.dtype, tuple(images.shape[1:]))
        self.signature = self._signature()

    def _capture_or_fall_back(
        self, images: torch.Tensor, batch_size: int, with_noise: bool
    ) -> None:
        snapshot = self._snapshot()
        try:
            self._capture(images, batch_size, with_noise)
        except Exception as exc:  # noqa: BLE001 - any capture failure means: run eagerly
            self._restore(snapshot)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            warnings.warn(
                f"CUDA graph capture failed ({type(exc).__name__}: {first}); training "
                "continues without graphs (mode 'tuned').",
                RuntimeWarning,
                stacklevel=3,
            )
            self.graph, self.mode = None, "tuned"
            self.fallback = EagerEpoch(self.model, self.optimizer, self.device)

    # ---- the epoch

    def _eager_step(
        self,
        clean: torch.Tensor,
        inputs: torch.Tensor,
    ) -> None:
        loss = F.mse_loss(self.model(inputs), clean)
        self.optimizer.zero_grad(set_to_none=False)  # keep the graph's gradient tensors
        loss.backward()
        self.optimizer.step()
        self.total.add_(loss.detach() * clean.shape[0])

    def __call__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        images: torch.Tensor,
        batch_size: int,
        shuffle: torch.Generator,
        noise: NoiseFn | None = None,
        noise_generator: torch.Generator | None = None,
    ) -> float:
        if model is not self.model or optimizer is not self.optimizer:
            self._bind(model, optimizer)
        if images.device.type != self.device.type:  # the device is CUDA (see __init__)
            raise AetoolError("Training mode 'graph' needs the images on the CUDA device.")
        n = images.shape[0]
        full = n // batch_size
        with_noise = noise is not None
        if self.fallback is None:
            configure_optimizer(optimizer, capturable=True)
            self._sync_learning_rates()
            key = (batch_size, with_noise, images.dtype, tuple(images.shape[1:]))
            stale = self.graph is None or key != self.key or self._signature() != self.signature
            if full and stale:
                self._capture_or_fall_back(images, batch_size, with_noise)
        if self.fallback is not None:
            return self.fallback(
                model, optimizer, images, batch_size, shuffle, noise, noise_generator
            )
        model.train()
        order = torch.randperm(n, generator=shuffle).to(images.device, non_blocking=True)
        self.total.zero_()
        for b in range(full):
            idx = order[b * batch_size : (b + 1) * batch_size]
            if with_noise:
                clean = to_float(images[idx])
                self.static["clean"].copy_(clean)
                self.static["inputs"].copy_(noise(clean, noise_generator))
            else:
                torch.index_select(images, 0, idx, out=self.static["images"])
            self.graph.replay()
        if full * batch_size < n:
            clean = to_float(images[order[full * batch_size :]])
            inputs = noise(clean, noise_generator) if with_noise else clean
            self._eager_step(clean, inputs)
        return (self.total / n).item()
