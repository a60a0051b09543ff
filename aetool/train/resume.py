"""Checks of a run's `state.pt` before `fit --resume` trains on from it: every value has the
type and shape the training loop needs, so a damaged file is one sentence naming it
(`RunError`) instead of a traceback in the middle of an epoch.

`state.pt` holds (see `aetool.train.loop._Training.state`): the model's and the optimiser's
state_dicts, the generators' states, the history, the best validation loss and its epoch, the
seconds trained and the data set's sha256. The settings are in the run's config.json alone; a
state.pt written before that (issue 22) also holds them under "config", which is accepted and
not read.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from aetool.checks import check_list, check_object, shown
from aetool.errors import RunError

STATE_FIELDS = {"model": "dict", "optimizer": "dict", "history": "list", "best_val": "loss",
                "best_epoch": "int", "seconds": "seconds", "config": "dict",  # (old files)
                "dataset_sha256": "str?"}
REQUIRED = ("model", "optimizer", "history", "best_val", "best_epoch", "seconds")
ADAM_STATE = ("step", "exp_avg", "exp_avg_sq")  # what Adam keeps for a parameter it stepped
# Optimiser flags that change the arithmetic: a run resumes with the ones it started with (the
# others, such as `fused` and `capturable`, are the training mode's to set).
SAME_MATH = ("amsgrad", "maximize", "differentiable", "decoupled_weight_decay")
EPOCH_FIELDS = {"epoch": "count", "train_loss": "loss", "val_loss": "loss", "lr": "number",
                "seconds": "seconds"}


def check_state(state: dict[str, Any], source: Path | str) -> dict[str, Any]:
    """The plain values of a training state checked (losses as floats), its history's epochs
    included; the tensors are checked as they are loaded (`check_optimizer`)."""
    state = check_object(source, state, STATE_FIELDS, required=REQUIRED)
    state["history"] = check_list(source, state["history"], EPOCH_FIELDS, entry="epoch",
                                  required=tuple(EPOCH_FIELDS), key="history")
    extra = [k for r in state["history"] for k in r if k not in EPOCH_FIELDS]
    if extra:
        raise RunError(f"{source}: an epoch of its 'history' has the unknown entry "
                       f"{shown(extra[0])}.")
    return state


def _number(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.numel() == 1 and bool(torch.isfinite(value).all())
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)


def _same_kind(fresh: Any, loaded: Any) -> bool:
    """Whether an optimiser setting read back is of the kind a fresh optimiser has."""
    if fresh is None or isinstance(fresh, bool):
        return loaded is None or isinstance(loaded, bool)
    if isinstance(fresh, (int, float, torch.Tensor)):
        return _number(loaded)
    if isinstance(fresh, (tuple, list)):
        return isinstance(loaded, (tuple, list)) and len(loaded) == len(fresh) \
            and all(_same_kind(f, v) for f, v in zip(fresh, loaded, strict=True))
    return True


def check_optimizer(optimizer: torch.optim.Optimizer, fresh: list[dict[str, Any]],
                    source: Path | str) -> None:
    """After `optimizer.load_state_dict`: each group's settings are of the kinds of a fresh
    optimiser's (`fresh`: its param_groups before loading; the flags of `SAME_MATH` equal to
    them), and each parameter's state has Adam's entries, tensors of the parameter's shape
    with finite values."""
    for group, new in zip(optimizer.param_groups, fresh, strict=True):
        for key, value in new.items():
            loaded = group.get(key)
            same = type(loaded) is type(value) and loaded == value if key in SAME_MATH \
                else key == "params" or _same_kind(value, loaded)
            if not same:
                raise RunError(f"{source}: the optimiser's {key!r} is {shown(group.get(key))}; "
                               "the file is damaged and cannot be resumed.")
    needed = ADAM_STATE if isinstance(optimizer, torch.optim.Adam) else ()
    for param in (p for group in optimizer.param_groups for p in group["params"]):
        missing = [k for k in needed if optimizer.state.get(param) and k not in
                   optimizer.state[param]]
        if missing:
            raise RunError(f"{source}: the optimiser's state lacks {missing[0]!r}; the file is "
                           "damaged and cannot be resumed.")
        for key, value in optimizer.state.get(param, {}).items():
            if key == "step":
                fine = _number(value) and float(value) >= 0
            else:
                fine = isinstance(value, torch.Tensor) and value.shape == param.shape \
                    and value.is_floating_point() and bool(torch.isfinite(value).all())
            if not fine:
                raise RunError(f"{source}: the optimiser's {key!r} state does not fit the "
                               "model (wrong shape, or not finite numbers); the file is "
                               "damaged and cannot be resumed.")
