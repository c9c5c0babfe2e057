"""Reader for the IDX file format of (Fashion-)MNIST, plain or gzip-compressed.

An IDX file is a 4-byte magic number ``0x00 0x00 <dtype> <ndim>``, then ``ndim`` big-endian int32 sizes, then the
values in row-major order. The reader checks each part against what the caller expects, so a corrupted or
swapped file fails with a message naming the file and the mismatch instead of training on garbage.
"""

from __future__ import annotations

import gzip
import math
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

# IDX type byte -> (numpy big-endian dtype, torch dtype).
_IDX_TYPES: dict[int, tuple[str, torch.dtype]] = {
    0x08: (">u1", torch.uint8),
    0x09: (">i1", torch.int8),
    0x0B: (">i2", torch.int16),
    0x0C: (">i4", torch.int32),
    0x0D: (">f4", torch.float32),
    0x0E: (">f8", torch.float64),
}

IMAGES_MAGIC = 0x00000803
"""Magic number of an IDX file of uint8 values with 3 dimensions (images)."""
LABELS_MAGIC = 0x00000801
"""Magic number of an IDX file of uint8 values with 1 dimension (labels)."""


class IDXFormatError(ValueError):
    """An IDX file whose header or size does not match the format or the caller's expectation."""


def _open(path: Path):  # type: ignore[no-untyped-def]
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _unreadable(path: Path, err: BaseException) -> IDXFormatError:
    return IDXFormatError(f"{path}: cannot read the file ({err}); re-install it or point data.root elsewhere")


def _read_bytes(path: Path) -> bytes:
    try:
        with _open(path) as f:
            return f.read()
    except (OSError, EOFError) as err:  # gzip.BadGzipFile is an OSError; a truncated gzip stream is an EOFError
        raise _unreadable(path, err) from err


def _parse_header(
    path: Path, raw: bytes, expected_magic: int | None, expected_shape: Sequence[int | None] | None
) -> tuple[int, tuple[int, ...], int]:
    """(type code, shape, header length) of the IDX header at the start of ``raw``, checked against expectations."""
    if len(raw) < 4:
        raise IDXFormatError(f"{path}: file of {len(raw)} bytes is too short for an IDX header")
    (magic,) = struct.unpack(">I", raw[:4])
    if expected_magic is not None and magic != expected_magic:
        raise IDXFormatError(f"{path}: magic number 0x{magic:08x}, expected 0x{expected_magic:08x}")
    zero, type_code, ndim = magic >> 16, (magic >> 8) & 0xFF, magic & 0xFF
    if zero != 0 or type_code not in _IDX_TYPES:
        raise IDXFormatError(f"{path}: magic number 0x{magic:08x} is not an IDX header")
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise IDXFormatError(f"{path}: file ends inside the header ({len(raw)} bytes, {ndim} dimensions)")
    shape = tuple(struct.unpack(f">{ndim}I", raw[4:header_len]))
    if expected_shape is not None:
        same_rank = len(expected_shape) == ndim
        if not same_rank or any(e is not None and e != s for e, s in zip(expected_shape, shape, strict=True)):
            raise IDXFormatError(f"{path}: shape {shape}, expected {tuple(expected_shape)}")
    return type_code, shape, header_len


def _check_payload(path: Path, payload: int, type_code: int, shape: tuple[int, ...]) -> None:
    needed = math.prod(shape) * np.dtype(_IDX_TYPES[type_code][0]).itemsize
    if payload != needed:
        raise IDXFormatError(f"{path}: {payload} data bytes, but the header's shape {shape} needs {needed}")


def check_idx(
    path: str | Path,
    expected_magic: int | None = None,
    expected_shape: Sequence[int | None] | None = None,
) -> tuple[int, ...]:
    """Validate one IDX file's header and size without keeping its values (streamed); returns its shape.

    The same checks as :func:`read_idx`, for a DataModule's ``prepare_data``: a bad file fails before training.
    """
    path = Path(path)
    try:
        with _open(path) as f:
            head = f.read(4 + 4 * 255)
            type_code, shape, header_len = _parse_header(path, head, expected_magic, expected_shape)
            payload = len(head) - header_len
            while chunk := f.read(1 << 22):
                payload += len(chunk)
    except (OSError, EOFError) as err:
        raise _unreadable(path, err) from err
    _check_payload(path, payload, type_code, shape)
    return shape


def read_idx(
    path: str | Path,
    expected_magic: int | None = None,
    expected_shape: Sequence[int | None] | None = None,
) -> torch.Tensor:
    """Read one IDX file (``.gz`` is decompressed) into a tensor of its stored type and shape.

    Args:
        path: the file.
        expected_magic: if given, the 4-byte magic number the file must start with (e.g. :data:`IMAGES_MAGIC`).
        expected_shape: if given, the shape the file must have; ``None`` entries accept any size.

    Raises:
        IDXFormatError: bad magic number, unknown type, wrong shape, or a payload whose size does not match the
            header (truncated or padded file).
    """
    path = Path(path)
    raw = _read_bytes(path)
    type_code, shape, header_len = _parse_header(path, raw, expected_magic, expected_shape)
    _check_payload(path, len(raw) - header_len, type_code, shape)
    np_dtype, torch_dtype = _IDX_TYPES[type_code]
    values = np.frombuffer(raw, dtype=np_dtype, offset=header_len).astype(np_dtype[1:], copy=True)
    return torch.from_numpy(values.reshape(shape)).to(torch_dtype)
