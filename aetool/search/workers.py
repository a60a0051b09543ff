"""The helper processes of a search with several workers on one machine (`run_search(...,
workers=N)`, `aetool search --workers N`): how many this machine can hold, starting them so
that none outlives the process that started it, and waiting for them.

How many. Each worker is a whole Python process with PyTorch, the data set and its models,
training with at least one CPU thread, so N may not exceed the cores this process may run on,
nor the memory available now divided by `WORKER_MEMORY` (a training worker on MNIST measured
about 0.85 GB; 1 GiB each is the conservative estimate).

Dying with the parent. A helper gets the starting process's pid in `$AETOOL_SEARCH_PARENT`
and calls `follow_parent()` first thing: on Linux the kernel then sends it SIGTERM when its
parent dies (`prctl(PR_SET_PDEATHSIG)`), elsewhere a thread checks every second whether its
parent changed. SIGTERM stops a worker as Ctrl-C does: its trials are failed, to be trained
again by the next search. A parent that died before the helper got that far is noticed too.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from aetool.errors import AetoolError, SettingError, first_line

WORKER_MEMORY = 1 << 30  # bytes one worker is assumed to need (see the module's docstring)
PARENT_ENV = "AETOOL_SEARCH_PARENT"
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
WATCH_INTERVAL = 1.0  # seconds between looks at the parent where prctl is not available


def cpu_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def available_memory() -> int | None:
    """Bytes of memory available to new processes now (the smaller of the machine's and the
    container's, where they can be read), or None where neither can."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    cgroups = Path("/sys/fs/cgroup")
    for limit, usage in (("memory.max", "memory.current"),
                         ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        total, used = _read_int(cgroups / limit), _read_int(cgroups / usage)
        if total is not None and used is not None and total < 1 << 60:  # "max": no limit
            found.append(max(0, total - used))
    if not found and hasattr(os, "sysconf"):
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError):
            pass
    return min(found) if found else None


def worker_limit() -> tuple[int, str]:
    """The most workers this machine can run at once, and why (cores, memory), in words."""
    cores = cpu_cores()
    limit, why = cores, f"{cores} CPU core{'s' if cores != 1 else ''}"
    memory = available_memory()
    if memory is not None:
        limit = min(limit, memory // WORKER_MEMORY)
        why += (f", {memory / 2**30:.1f} GiB of memory available at about "
                f"{WORKER_MEMORY / 2**30:g} GiB per worker")
    return max(1, limit), why


def check_workers(workers: int, threads: int | None = None) -> None:
    """At least one worker and no more than `worker_limit()`; threads, if given, at least 1.
    A `SettingError` names the first bad one."""
    if workers < 1:
        raise SettingError("workers", f"workers must be at least 1, got {workers}.")
    limit, why = worker_limit()
    if workers > limit:
        raise SettingError("workers", f"workers must be at most {limit} on this machine "
                           f"({why}), got {workers}.")
    if threads is not None and threads < 1:
        raise SettingError("threads", f"threads must be at least 1, got {threads}.")


def threads_per_worker(workers: int, threads: int | None) -> int | None:
    """Each worker's PyTorch CPU threads: `threads` if given; else, with several workers, an
    equal share of the cores; else None (leave PyTorch's setting)."""
    if threads is None and workers > 1:
        return max(1, cpu_cores() // workers)
    return threads


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """PyTorch's intra-op CPU threads set to `threads` (None: unchanged), restored after."""
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def start_workers(command: list[str], count: int,
                  settings: str | None = None) -> list[subprocess.Popen]:
    """Start `count` processes running `command` (no stdout; errors on stderr), each given
    `settings` on its stdin (if any) and told to end with this process (`follow_parent`).
    If one cannot be started, those already started are stopped and an AetoolError says so."""
    env = {**os.environ, PARENT_ENV: str(os.getpid())}
    started: list[subprocess.Popen] = []
    try:
        for _ in range(count):
            helper = subprocess.Popen(
                command, stdin=subprocess.DEVNULL if settings is None else subprocess.PIPE,
                stdout=subprocess.DEVNULL, env=env, text=True)
            started.append(helper)
            if settings is not None:
                helper.stdin.write(settings)  # a few hundred bytes: the pipe holds them
                helper.stdin.close()
    except BaseException as exc:
        for helper in started:
            helper.terminate()
        for helper in started:
            helper.wait()
        if isinstance(exc, OSError):
            raise AetoolError(f"Could not start search worker {len(started) + 1} of {count} "
                              f"more: {first_line(exc)}.") from None
        raise
    return started


def stop_workers(helpers: list[subprocess.Popen], stop: bool = False) -> None:
    """Wait for the helper workers (they finish with the grid); with `stop` (this worker
    stopped early) stop them first, so their trials are failed and retried by the next
    search. A helper that ended otherwise than done or stopped is a warning."""
    if stop:
        for helper in helpers:
            if helper.poll() is None:
                helper.terminate()
    for helper in helpers:
        if helper.wait() not in (0, 130, -signal.SIGTERM):
            warnings.warn(f"Search worker {helper.pid} ended with exit code "
                          f"{helper.returncode}.", RuntimeWarning, stacklevel=2)


def _parent_death_signal() -> bool:
    """Ask Linux to send this process SIGTERM when its parent ends; whether it agreed."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(WATCH_INTERVAL)
    os.kill(os.getpid(), signal.SIGTERM)


def follow_parent() -> None:
    """In a process `start_workers` started: end with SIGTERM once the process that started
    it ends (at once if it already has). Elsewhere (no `$AETOOL_SEARCH_PARENT`): nothing."""
    value = os.environ.pop(PARENT_ENV, "")
    if not value.isdigit():
        return
    parent = int(value)
    if not _parent_death_signal():
        threading.Thread(target=_watch, args=(parent,), name="aetool-parent-watch",
                         daemon=True).start()
    if os.getppid() != parent:  # it ended before the signal was asked for
        os.kill(os.getpid(), signal.SIGTERM)
