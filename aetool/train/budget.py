"""Training to a time budget (`aetool fit --time 10m`): durations, and how many epochs fit.

A cosine schedule depends on `max_epochs` from its first epoch, so the length is chosen before
the run starts: a throwaway copy of the model trains a few batches (a warm-up, then chunks of
`CHUNK_BATCHES` for about 2% of the budget, at most 30 s), and one validation pass is timed.
An epoch is then estimated as (median seconds per batch) x (batches per epoch) + validation,
and `max_epochs` is the number of such epochs that fit into `MARGIN` of what is left of the
budget after the measuring and the final test pass. The run then trains with that length from
epoch 1, exactly as `--max-epochs N` would; `config.json` records it beside the budget, so a
resumed run keeps it and reaches the same result.
"""

from __future__ import annotations

import math
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

from aetool.errors import AetoolError

MARGIN = 0.9  # the share of the budget planned for epochs; the rest absorbs slower epochs
WARMUP_BATCHES = 3  # first steps allocate memory and warm caches (or compile): not timed
CHUNK_BATCHES = 10  # batches per timed sample
MEASURE_SHARE = 0.02  # of the budget spent measuring...
MEASURE_MAX_SECONDS = 30.0  # ...but at most this
MAX_EPOCHS = 1_000_000  # the cap when only --time decides the length
clock: Callable[[], float] = time.perf_counter  # tests replace it with a fake clock

_DURATION = re.compile(r"^(?:(?P<h>\d+(?:\.\d+)?)h)?(?:(?P<m>\d+(?:\.\d+)?)m)?"
                       r"(?:(?P<s>\d+(?:\.\d+)?)s?)?$")


def parse_duration(text: str) -> float:
    """Seconds in `90`, `45s`, `10m`, `1h30m`, `1m30s`; ValueError for anything else."""
    match = _DURATION.match(text.strip().lower())
    if not text.strip() or match is None or not any(match.groupdict().values()):
        raise ValueError(f"{text!r} is not a duration like 90, 45s, 10m or 1h30m")
    parts = {k: float(v) for k, v in match.groupdict().items() if v}
    seconds = parts.get("h", 0) * 3600 + parts.get("m", 0) * 60 + parts.get("s", 0)
    if not seconds > 0:
        raise ValueError(f"{text!r} is not a positive duration")
    return seconds


def duration_text(seconds: float) -> str:
    """Seconds as `1h30m`, `10m`, `45s`."""
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "")
    return text + (f"{secs}s" if secs or not text else "")


@dataclass
class BudgetPlan:
    """How a time budget became a number of epochs (kept in metrics.json)."""

    budget: float  # seconds for the whole run, measuring and the test pass included
    batch_seconds: float  # median seconds per training batch, measured
    val_seconds: float  # one validation pass, measured
    epoch_seconds: float  # the estimate: batches per epoch x batch_seconds + val_seconds
    measure_seconds: float  # spent measuring, before epoch 1
    test_seconds: float  # the final test pass, estimated from the validation pass
    budget_epochs: int  # epochs that fit into the budget
    max_epochs: int  # what the run trains: budget_epochs, or a smaller cap (--max-epochs)


def plan_epochs(budget: float, train_batches: Callable[[int], int],
                evaluate_val: Callable[[], None], *, batches_per_epoch: int,
                test_ratio: float, cap: int) -> BudgetPlan:
    """Measure, then choose `max_epochs` for `budget` seconds (at most `cap`).

    `train_batches(k)` trains about k batches of the real size and returns how many it ran;
    `evaluate_val()` runs one validation pass; `test_ratio` is test images / validation
    images. Raises AetoolError when not even one epoch fits."""
    start = clock()
    train_batches(WARMUP_BATCHES)
    samples: list[float] = []
    seen = 0
    limit = min(MEASURE_SHARE * budget, MEASURE_MAX_SECONDS)
    while not samples or (clock() - start < limit and seen < batches_per_epoch):
        tic = clock()
        ran = max(train_batches(CHUNK_BATCHES), 1)
        samples.append((clock() - tic) / ran)
        seen += ran
    tic = clock()
    evaluate_val()
    val_seconds = clock() - tic
    spent = clock() - start
    batch_seconds = statistics.median(samples)
    epoch_seconds = batch_seconds * batches_per_epoch + val_seconds
    test_seconds = val_seconds * test_ratio
    fits = math.floor(max(budget - spent - test_seconds, 0.0) * MARGIN / epoch_seconds)
    if fits < 1:
        raise AetoolError(
            f"The time budget of {duration_text(budget)} is less than one epoch (about "
            f"{epoch_seconds:.1f} s) on this device; give more time."
        )
    return BudgetPlan(budget, batch_seconds, val_seconds, epoch_seconds, spent, test_seconds,
                      fits, min(fits, cap))
