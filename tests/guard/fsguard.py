"""A guard for aetool's tests: nothing outside the test's folders is written or deleted.

An audit hook (PEP 578, `sys.addaudithook`) sees, whatever library makes the call, every `open`
for writing (write, append, create or truncate), `os.remove`/`unlink`, `os.rename`/`replace`,
`os.rmdir`, `os.mkdir`, `os.symlink`, `os.link`, `os.truncate`, `os.chmod`, `os.chown`,
`shutil.rmtree`, `shutil.move` and `sqlite3.connect`, and refuses any whose path lies outside the
allowed roots. Paths are resolved as the operating system will: the final symbolic link is
followed for an `open` (unless `O_NOFOLLOW` or `O_CREAT | O_EXCL`), not for a removal or rename;
a path relative to a `dir_fd` is resolved through /proc/self/fd.

Always allowed, besides the roots: a file directly in a `__pycache__` folder (byte code), an
`os.mkdir` of a folder that already exists (it changes nothing), and /dev/null, /dev/shm,
/dev/tty, /dev/pts and the standard streams.

Two modes:

* "raise", in the pytest process (installed by pytest_fsguard.py): the operation is aborted with
  `GuardViolation` (a BaseException, so `except Exception` or `except OSError` in the code under
  test cannot swallow it silently) and written to the guard's log, from which the pytest plugin
  fails the test even if the exception was caught.
* "exit", in every Python subprocess whose PYTHONPATH holds this folder (sitecustomize.py reads
  the roots from $AETOOL_TEST_GUARD_ROOTS): one line on stderr, one line in the log, and the
  process ends at once with exit code 99.

Not seen: files written by code that is not Python (C++ in PyTorch, compilers, a browser).
Keep this module free of third-party imports: it is loaded at every subprocess's start.
"""

from __future__ import annotations

import _thread
import contextlib
import os
import sys
from collections.abc import Iterator

ROOTS_ENV = "AETOOL_TEST_GUARD_ROOTS"
LOG_ENV = "AETOOL_TEST_GUARD_LOG"
EXIT_CODE = 99
GUARD_DIR = os.path.dirname(os.path.abspath(__file__))
DEVICES = ("/dev/null", "/dev/shm", "/dev/tty", "/dev/pts", "/dev/stdin", "/dev/stdout",
           "/dev/stderr")
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
NO_FOLLOW = getattr(os, "O_NOFOLLOW", 0)


class GuardViolation(BaseException):
    """A write or deletion outside the test's folders, refused by the guard."""

    def __init__(self, event: str, given: object, resolved: str) -> None:
        self.event, self.given, self.resolved = event, given, resolved
        super().__init__(f"aetool test guard: {event} on {given!r} (that is {resolved}) is "
                         f"outside the test's folders ({', '.join(_state.roots)}).")


class _State:
    roots: tuple[str, ...] = ()
    log: str | None = None
    mode = "raise"
    active = False
    installed = False
    log_offset = 0
    expecting: list[list[GuardViolation]] = []


_state = _State()
_busy: set[int] = set()  # threads inside the hook (its own log write must not recurse)


# --------------------------------------------------------------------------- paths

def _fd_path(fd: int) -> str | None:
    """The file an open descriptor refers to, or None for a pipe, socket or unknown fd."""
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
    target = target.removesuffix(" (deleted)")
    return target if target.startswith("/") else None


def _absolute(path: object, dir_fd: object) -> str | None:
    """`path` made absolute (relative to `dir_fd` or the working folder), None if not a path."""
    if isinstance(path, int):
        return _fd_path(path)
    try:
        text = os.fsdecode(path)  # str, bytes or os.PathLike
    except TypeError:
        return None
    if os.path.isabs(text):
        return text
    if isinstance(dir_fd, int) and dir_fd >= 0:
        base = _fd_path(dir_fd)
    else:
        try:
            base = os.getcwd()
        except OSError:
            base = None
    return os.path.join(base, text) if base else os.path.join("<unknown folder>", text)


def _resolve(absolute: str, follow: bool) -> str:
    """The real path; the last component is kept as it is when the call does not follow it."""
    if follow:
        return os.path.realpath(absolute)
    head, tail = os.path.split(absolute.rstrip(os.sep) or os.sep)
    if tail in ("", ".", ".."):
        return os.path.realpath(absolute)
    return os.path.join(os.path.realpath(head), tail)


def _under(path: str, roots: tuple[str, ...]) -> bool:
    return any(path == root or path.startswith(root.rstrip(os.sep) + os.sep) for root in roots)


def allowed(absolute: str, resolved: str) -> bool:
    """Whether the guard lets a call write or delete `resolved` (`absolute` before links)."""
    if _under(resolved, _state.roots):
        return True
    if _under(os.path.normpath(absolute), DEVICES) or _under(resolved, DEVICES):
        return True
    return "__pycache__" in resolved.split(os.sep)[-2:]


# --------------------------------------------------------------------------- events

Target = tuple[object, object, bool]  # (path, dir_fd, follow the last link)


def _open_targets(args: tuple) -> list[Target]:
    path, _mode, flags = args
    if not isinstance(flags, int) or not flags & WRITE_FLAGS:
        return []
    exclusive = flags & os.O_CREAT and flags & os.O_EXCL
    return [(path, None, not (flags & NO_FOLLOW or exclusive))]


def _mkdir_targets(args: tuple) -> list[Target]:
    path, _mode, dir_fd = args
    absolute = _absolute(path, dir_fd)
    if absolute is not None and os.path.lexists(absolute):
        return []  # fails with "exists": changes nothing
    return [(path, dir_fd, False)]


def _move_targets(args: tuple) -> list[Target]:
    src, dst = args
    targets: list[Target] = [(src, None, False), (dst, None, False)]
    if os.path.isdir(dst):
        targets.append((dst, None, True))  # moved into the folder the name points to
    return targets


def _sqlite_targets(args: tuple) -> list[Target]:
    database = os.fsdecode(args[0]) if isinstance(args[0], (str, bytes, os.PathLike)) else ""
    if database in ("", ":memory:"):
        return []
    if database.startswith("file:"):
        path, _, query = database[5:].partition("?")
        if "mode=memory" in query or "mode=ro" in query:
            return []
        database = path[2:] if path.startswith("//") else path
    return [(database, None, True)]


TARGETS = {
    "open": _open_targets,
    "os.mkdir": _mkdir_targets,
    "os.remove": lambda a: [(a[0], a[1], False)],
    "os.rmdir": lambda a: [(a[0], a[1], False)],
    "os.rename": lambda a: [(a[0], a[2], False), (a[1], a[3], False)],
    "os.symlink": lambda a: [(a[1], a[2], False)],
    "os.link": lambda a: [(a[1], a[3], False)],
    "os.truncate": lambda a: [(a[0], None, True)],
    "os.chmod": lambda a: [(a[0], a[2], True)],
    "os.chown": lambda a: [(a[0], a[3], True)],
    "shutil.rmtree": lambda a: [(a[0], a[1] if len(a) > 1 else None, False)],
    "shutil.move": _move_targets,
    "sqlite3.connect": _sqlite_targets,
}


def check(event: str, args: tuple) -> GuardViolation | None:
    """The violation `event` with `args` would be, or None when it stays inside."""
    for path, dir_fd, follow in TARGETS[event](args):
        absolute = _absolute(path, dir_fd)
        if absolute is None:
            continue
        resolved = _resolve(absolute, follow)
        if not allowed(absolute, resolved):
            return GuardViolation(event, path, resolved)
    return None


# --------------------------------------------------------------------------- the hook

def _log(line: str) -> None:
    if _state.log:
        fd = os.open(_state.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode("utf-8", "backslashreplace"))
        finally:
            os.close(fd)


def _hook(event: str, args: tuple) -> None:
    if event not in TARGETS or not _state.active:
        return
    if event == "open" and not (isinstance(args[2], int) and args[2] & WRITE_FLAGS):
        return  # the common case, kept cheap: a read
    me = _thread.get_ident()
    if me in _busy:
        return
    _busy.add(me)
    try:
        violation = check(event, args)
        if violation is None:
            return
        if _state.expecting:  # a test that provokes it on purpose: abort, do not log
            _state.expecting[-1].append(violation)
        else:
            _log(f"pid {os.getpid()}: {violation}\n")
        if _state.mode == "exit":
            os.write(2, f"{violation} Process stopped.\n".encode("utf-8", "backslashreplace"))
            os._exit(EXIT_CODE)
    finally:
        _busy.discard(me)
    raise violation


def install(roots: list[str], log: str | None, mode: str = "raise") -> None:
    """Guard this process from now on (again: new roots, log and mode replace the old ones)."""
    _state.roots = tuple(dict.fromkeys(os.path.realpath(r) for r in roots if r))
    _state.log, _state.mode, _state.active = log, mode, True
    if not _state.installed:
        sys.addaudithook(_hook)
        _state.installed = True


def install_from_env() -> bool:
    """In a subprocess: guard it when $AETOOL_TEST_GUARD_ROOTS names the allowed roots."""
    roots = [r for r in os.environ.get(ROOTS_ENV, "").split(os.pathsep) if r]
    if roots:
        install(roots, os.environ.get(LOG_ENV) or None, mode="exit")
    return bool(roots)


def deactivate() -> None:
    """Stop refusing (the hook stays, as audit hooks cannot be removed)."""
    _state.active = False


def roots() -> tuple[str, ...]:
    return _state.roots


def logged() -> list[str]:
    """The violations logged (by this process or a subprocess) since the last call."""
    if not _state.log or not os.path.exists(_state.log):
        return []
    with open(_state.log, "rb") as handle:
        handle.seek(_state.log_offset)
        data = handle.read()
    complete = data[: data.rfind(b"\n") + 1]
    _state.log_offset += len(complete)
    return complete.decode("utf-8", "replace").splitlines()


@contextlib.contextmanager
def expect_violation() -> Iterator[list[GuardViolation]]:
    """For the guard's own tests: a violation inside the block is still refused, but it is
    collected in the list yielded instead of failing the test; none at all is an error."""
    caught: list[GuardViolation] = []
    _state.expecting.append(caught)
    try:
        yield caught
    except GuardViolation:
        pass
    finally:
        _state.expecting.remove(caught)
    if not caught:
        raise AssertionError("the guard was expected to refuse a write outside; it saw none")


def guarded_env(**extra: str) -> dict[str, str]:
    """The environment for a Python subprocess of a test: this process's environment with
    `extra`, the guard's folder first on PYTHONPATH and the guard's roots and log, so the
    subprocess (and any worker it starts) is guarded as well."""
    env = dict(os.environ)
    if _state.roots:
        env[ROOTS_ENV] = os.pathsep.join(_state.roots)
    if _state.log:
        env[LOG_ENV] = _state.log
    env.update(extra)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != GUARD_DIR]
    env["PYTHONPATH"] = os.pathsep.join([GUARD_DIR, *paths])
    return env
