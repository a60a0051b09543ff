"""`aetool search --parallel auto`: one model at a time on a CPU; on a GPU as many as half its
free memory holds, at most 128 (README, "Speed" under the grid search)."""

from __future__ import annotations

import pytest
import torch

from aetool.search.grid import auto_parallel

GIB = 1 << 30


def test_a_cpu_trains_one_model_at_a_time():
    assert auto_parallel(torch.device("cpu"), 1000) == 1
    assert auto_parallel(torch.device("cpu"), 1) == 1


@pytest.mark.parametrize(
    ("free", "batch_size", "expected"),
    [
        (79 * GIB, 1000, 128),  # an idle H100: capped at 128
        (8 * GIB, 1000, 26),  # 4 GiB / (1000 images x 160 kB)
        (8 * GIB, 100, 128),  # smaller batches, more models (268 before the cap)
        (100 * 1024**2, 1000, 1),  # nearly full: still one, never 0
        (2 * GIB, 0, 128),  # a batch size of 0 counts as 1 image, no division by zero
    ],
)
def test_a_gpu_trains_as_many_as_half_its_free_memory_holds(monkeypatch, free, batch_size,
                                                              expected):
    asked = []

    def mem_get_info(device=None):
        asked.append(device)
        return free, 80 * GIB

    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    assert auto_parallel(torch.device("cuda", 1), batch_size) == expected
    assert asked == [torch.device("cuda", 1)]  # the free memory of the device in use


def test_the_report_grid_of_one_ed_fits_together_on_a_gpu(monkeypatch):
    """27 models (9 settings x 3 folds) at batch 1000 go together once 9 GB are free."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (9 * GIB, 80 * GIB))
    assert auto_parallel(torch.device("cuda"), 1000) >= 27


def test_apple_gpus_count_what_metal_recommends_minus_what_is_taken(monkeypatch):
    monkeypatch.setattr(torch.mps, "recommended_max_memory", lambda: 16 * GIB)
    monkeypatch.setattr(torch.mps, "driver_allocated_memory", lambda: 12 * GIB)
    assert auto_parallel(torch.device("mps"), 1000) == 13  # 2 GiB / 160 MB
