"""`python -m aetool.search`: one helper worker of a search that `run_search(..., workers=N)`
started (not a command for people: `aetool search` is).

It reads its settings as JSON on stdin (`aetool.search.grid.helper_settings`), ends with the
process that started it (`aetool.search.workers.follow_parent`), writes nothing on stdout and
only errors and warnings on stderr, and exits 0 once the grid is done, 1 after a problem (one
sentence), 2 for a bad setting, 130 when stopped (SIGTERM or Ctrl-C: its trials are failed,
to be trained again by the next search).
"""

from __future__ import annotations

import os
import signal
import sys
import warnings
from typing import Any

from aetool.errors import AetoolError, SettingError, os_reason
from aetool.search.grid import read_helper_settings, run_search
from aetool.search.workers import follow_parent


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _say(kind: str, message: str) -> None:
    sys.stderr.write(f"{kind} in search worker {os.getpid()}: {message}\n")
    sys.stderr.flush()


def _show_warning(message: Any, category: type, filename: str, lineno: int,
                  file: Any = None, line: Any = None) -> None:
    _say("Warning", str(message))


def main() -> int:
    """Run this helper's part of the search; its exit code."""
    warnings.showwarning = _show_warning
    try:
        signal.signal(signal.SIGTERM, _interrupt)
        follow_parent()  # SIGTERM (stopped, trials failed) once the search that started it ends
        config, root, data_dir, threads = read_helper_settings(sys.stdin.read())
        run_search(config, root, threads=threads, data_dir=data_dir)
    except KeyboardInterrupt:
        return 130
    except SettingError as exc:
        _say("Error", str(exc))
        return 2
    except AetoolError as exc:
        _say("Error", str(exc))
        return 1
    except OSError as exc:
        if exc.filename is None:
            raise
        _say("Error", f"Cannot use {exc.filename}: {os_reason(exc)}.")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
