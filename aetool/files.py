"""Files on disk: atomic writes, JSON, and safe PyTorch checkpoints.

Every file aetool writes goes through `write_atomic` (a temporary name in the same folder, then
a rename), so an interrupted command never leaves a half-written file. Every checkpoint is read
with `torch.load(weights_only=True)`: tensors and plain values only, nothing is unpickled.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import secrets
from pathlib import Path
from typing import Any

import torch

from aetool.errors import AetoolError, first_line, os_reason


def _no_follow() -> int:
    return getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)


def _cannot_write(path: Path, exc: OSError) -> AetoolError:
    return AetoolError(f"Cannot write {path}: {os_reason(exc)}.")


def write_atomic(path: Path, data: bytes) -> None:
    """Write bytes under a fresh temporary name in the same folder, then rename: never a
    half-written file.

    The temporary file is created with `O_CREAT | O_EXCL | O_NOFOLLOW` under an unpredictable
    name, so a file or symbolic link planted in the folder is never opened, and the rename
    replaces a link at `path` itself rather than the file it points to. A folder that cannot be
    written gets an `AetoolError` naming the path."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _cannot_write(path.parent, exc) from None
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _no_follow(), 0o644)
    except OSError as exc:
        raise _cannot_write(path, exc) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        raise _cannot_write(path, exc) from None
    finally:
        tmp.unlink(missing_ok=True)


def jsonable(obj: Any) -> Any:
    """`obj` with non-finite floats, tuples and paths turned into what JSON can hold."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else str(obj)
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def save_json(path: Path | str, obj: Any) -> None:
    """Write JSON atomically (temporary name, then rename)."""
    write_atomic(Path(path), (json.dumps(jsonable(obj), indent=2) + "\n").encode())


def load_json(path: Path | str, error: type[AetoolError] = AetoolError) -> Any:
    """Parsed JSON, or `error` naming the file when it is missing or not JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise error(f"{path} does not exist.") from None
    except (OSError, ValueError) as exc:
        raise error(f"{path} is not valid JSON ({exc}).") from None


def save_torch(path: Path | str, obj: Any) -> None:
    """`torch.save` atomically; `obj` must hold only tensors and plain Python values."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_atomic(Path(path), buffer.getvalue())


def load_torch(path: Path | str, error: type[AetoolError] = AetoolError) -> Any:
    """`torch.load(weights_only=True)`, with one sentence for a missing, corrupt or unsafe file.

    A file that holds arbitrary Python objects is refused, never unpickled: the message says
    so, and does not repeat PyTorch's advice to load it with `weights_only=False`."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path} does not exist.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise error(
            f"{path} cannot be read safely: it is not a plain tensor checkpoint (it holds other "
            "Python objects), and aetool will not unpickle it."
        ) from None
    except Exception as exc:  # corrupt zip, truncated file, not a checkpoint at all...
        raise error(f"{path} cannot be read safely: it is truncated or not a PyTorch checkpoint "
                    f"({first_line(exc)}).") from None
