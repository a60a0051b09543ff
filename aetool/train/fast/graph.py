"""The `graph` epoch (CUDA): the whole training step captured once in a CUDA graph and replayed
for every full batch."""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F

from aetool.data import to_float
from aetool.errors import AetoolError, first_line
from aetool.train.fast.optim import configure_optimizer, is_adam_family
from aetool.train.fast.precision import Precision
from aetool.train.fast.tuned import EagerEpoch
from aetool.train.step import NoiseFn


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
    carries on in `tuned` mode. With `precision` `bf16-mixed` the forward pass runs under
    autocast inside the captured region, with autocast's weight cache off (cached casts would
    go stale between replays); `16-mixed` is refused (its gradient scaler cannot be captured).
    """

    WARMUP_STEPS = 3
    precision = Precision()  # float32 unless __init__ is given another

    def __init__(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, device: torch.device,
        precision: str = "32",
    ) -> None:
        if device.type != "cuda":
            raise AetoolError(f"Training mode 'graph' needs a CUDA device, not {device.type}.")
        if not is_adam_family(optimizer):
            raise AetoolError(
                f"Training mode 'graph' needs Adam or AdamW, not {type(optimizer).__name__}."
            )
        self.device = device
        self.precision = Precision(precision, device, cache_enabled=False)
        if self.precision.scaler is not None:
            raise AetoolError("Training mode 'graph' cannot run in precision '16-mixed'.")
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
        with self.precision.autocast():
            return F.mse_loss(self.model(inputs), clean)

    def _captured_step(self, batch_size: int, with_noise: bool) -> None:
        """The step the graph holds: forward, backward, Adam, and the loss added to the total.
        (A method of its own, so that tests can replay it on the CPU, tests/train/test_fast.py.)"""
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
            warnings.warn(
                f"CUDA graph capture failed ({type(exc).__name__}: {first_line(exc)}); training "
                "continues without graphs (mode 'tuned').",
                RuntimeWarning,
                stacklevel=3,
            )
            self.graph, self.mode = None, "tuned"
            self.fallback = EagerEpoch(self.model, self.optimizer, self.device,
                                       precision=self.precision.name)

    # ---- the epoch

    def _eager_step(
        self,
        clean: torch.Tensor,
        inputs: torch.Tensor,
    ) -> None:
        with self.precision.autocast():
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
