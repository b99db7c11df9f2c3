"""Argument checks shared by the data modules: hashes that become file names, bytes, ints."""

from __future__ import annotations

from template.wire.dataset import DatasetError, is_sha256


def check_sha256(value: object, what: str = "shard hash") -> str:
    # The hash becomes a file name, so anything but 64 lowercase hex digits (no "/", "..", NUL, case
    # variants that would alias on case-insensitive disks) is refused before touching the filesystem.
    if not is_sha256(value):
        shown = value if isinstance(value, str) and len(value) <= 80 else f"{str(value)[:80]}…"
        raise DatasetError(f"malformed {what} {shown!r}: expected 64 lowercase hex digits")
    return value  # type: ignore[return-value]


def as_bytes(data: object, what: str) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise DatasetError(f"{what} must be bytes, got {type(data).__name__}")


def check_int(value: object, name: str, *, minimum: int | None = None) -> int:
    # bool is an int subclass; True as a step or seq_len is always a caller bug.
    if isinstance(value, bool) or not isinstance(value, int):
        raise DatasetError(f"{name} must be an int, got {value!r}")
    if minimum is not None and value < minimum:
        raise DatasetError(f"{name} must be >= {minimum}, got {value}")
    return value
