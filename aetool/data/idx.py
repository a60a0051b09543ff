"""The IDX file format of MNIST, Fashion-MNIST, KMNIST, EMNIST and QMNIST: read, check, write.

An IDX file is a big-endian header (a magic number, then one 32-bit size per dimension)
followed by the raw bytes. aetool reads images (magic 2051, N x 28 x 28 uint8) and labels
(magic 2049, N uint8), plain or gzipped, and checks the header against the file's size and
the labels against their range before anything uses them.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import torch

from aetool.errors import DataError

IMAGE_MAGIC = 2051
LABEL_MAGIC = 2049
SIDE = 28
FIX = "delete it and run the command again to fetch a fresh copy"


def parse_idx(data: bytes, kind: str, expected_count: int | None, source: str,
              max_label: int | None = 9, fix: str = FIX) -> torch.Tensor:
    """Parse one IDX file's bytes into a uint8 tensor, checking magic, shape, size and values.

    Images come back as (N, 1, 28, 28) uint8, labels as (N,) int64 in 0..`max_label` (any
    byte when `max_label` is None). `fix` ends every error: what the user should do."""
    magic = IMAGE_MAGIC if kind == "images" else LABEL_MAGIC
    ndim = 3 if kind == "images" else 1
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{source} is truncated ({len(data)} bytes, no IDX header); {fix}.")
    (got_magic,) = struct.unpack(">i", data[:4])
    if got_magic != magic:
        raise DataError(
            f"{source} is not an IDX {kind} file (magic {got_magic}, expected {magic}); {fix}."
        )
    dims = struct.unpack(f">{ndim}i", data[4:header])
    if expected_count is not None and dims[0] != expected_count:
        raise DataError(f"{source} holds {dims[0]} {kind}, expected {expected_count}; {fix}.")
    if kind == "images" and tuple(dims[1:]) != (SIDE, SIDE):
        raise DataError(f"{source} holds {dims[1]}x{dims[2]} images, expected 28x28; {fix}.")
    count = 1
    for d in dims:
        count *= d
    if len(data) != header + count:
        raise DataError(
            f"{source} has {len(data)} bytes but its header promises {header + count}; {fix}."
        )
    tensor = torch.frombuffer(bytearray(data[header:]), dtype=torch.uint8)
    if kind == "labels":
        if max_label is not None and tensor.numel() and int(tensor.max()) > max_label:
            raise DataError(f"{source} has labels outside 0-{max_label}; {fix}.")
        return tensor.long()
    return tensor.view(dims[0], 1, SIDE, SIDE)


def read_idx_file(path: Path, kind: str, expected_count: int | None = None,
                  max_label: int | None = 9, fix: str = FIX) -> torch.Tensor:
    """Read an IDX file (plain or .gz) with the checks of `parse_idx`."""
    try:
        data = path.read_bytes()
        if path.suffix == ".gz":
            data = gzip.decompress(data)
    except FileNotFoundError:
        raise DataError(f"{path} does not exist.") from None
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path} cannot be read ({exc}); {fix}.") from None
    return parse_idx(data, kind, expected_count, str(path), max_label, fix)


def idx_bytes(tensor: torch.Tensor, kind: str) -> bytes:
    """Encode a uint8 images (N, 28, 28) or labels (N,) tensor as an IDX file."""
    t = tensor.to(torch.uint8).contiguous().cpu()
    if kind == "images":
        t = t.reshape(-1, SIDE, SIDE)
        head = struct.pack(">iiii", IMAGE_MAGIC, t.shape[0], SIDE, SIDE)
    else:
        t = t.reshape(-1)
        head = struct.pack(">ii", LABEL_MAGIC, t.shape[0])
    return head + t.numpy().tobytes()
