"""The training data every tensorswarm participant shares, byte for byte.

The orchestrator builds a corpus (:func:`default_corpus` or :func:`load_corpus`), cuts it into
content-addressed shards (:func:`build_dataset`) and serves them from a :class:`ShardStore`; miners
and validators fetch shards by hash into a :class:`ShardCache`, which verifies every byte, so all of
them train and validate on identical data without trusting the transport.

Which bytes a miner trains on is a pure function of public values (:func:`batch_offsets`), so a
validator can recompute any miner's batch and audit the loss it reported; held-out shards are only
ever sampled by :func:`heldout_offsets`. The model is byte-level: a byte is a token, there is no
tokenizer, and :func:`windows_to_tensor` turns windows straight into ``LongTensor`` rows.

Randomness comes from :class:`DeterministicRNG` (SHA-256 in counter mode), not from numpy or
``random``: its output is fully specified here, so it is identical across machines, Python and numpy
versions, and easy to reimplement elsewhere.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import inspect
import json
import logging
import os
import re
import stat
import sys
import sysconfig
from collections import OrderedDict
from pathlib import Path
from typing import Annotated, Any, Awaitable, Callable, Iterable, Sequence, Union

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, StringConstraints, model_validator
from template.files import atomic_write

__all__ = [
    "DatasetError",
    "MissingShardError",
    "ShardInfo",
    "DatasetManifest",
    "default_corpus",
    "load_corpus",
    "build_dataset",
    "ShardStore",
    "ShardCache",
    "DeterministicRNG",
    "batch_offsets",
    "heldout_offsets",
    "windows_to_tensor",
    "shard_reader",
    "is_sha256",
    "sha256_hex",
    "file_header",
    "DEFAULT_CORPUS_BYTES",
    "DEFAULT_SHARD_SIZE",
    "DEFAULT_HELDOUT_FRACTION",
]

log = logging.getLogger(__name__)

DEFAULT_CORPUS_BYTES = 16 * 2**20
DEFAULT_SHARD_SIZE = 2**20
DEFAULT_HELDOUT_FRACTION = 0.05

_SHA256_RE = re.compile(r"[0-9a-f]{64}")


class DatasetError(Exception):
    """Bad or unusable data: a corpus, manifest, shard or sampling request that cannot be served.

    Messages are meant for people: they name the file or hash at fault and, where there is one, the fix.
    """


class MissingShardError(DatasetError):
    """A shard (or manifest) the store does not have; servers map this to 404, not to a corrupt-data error."""


# --------------------------------------------------------------------------- hashing helpers


def sha256_hex(data: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def is_sha256(value: object) -> bool:
    """True for exactly 64 lowercase hex digits (what :func:`sha256_hex` returns)."""
    return isinstance(value, str) and _SHA256_RE.fullmatch(value) is not None


def _check_sha256(value: object, what: str = "shard hash") -> str:
    # The hash becomes a file name, so anything but 64 lowercase hex digits (no "/", "..", NUL, case
    # variants that would alias on case-insensitive disks) is refused before touching the filesystem.
    if not is_sha256(value):
        shown = value if isinstance(value, str) and len(value) <= 80 else f"{str(value)[:80]}…"
        raise DatasetError(f"malformed {what} {shown!r}: expected 64 lowercase hex digits")
    return value  # type: ignore[return-value]


def _as_bytes(data: object, what: str) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise DatasetError(f"{what} must be bytes, got {type(data).__name__}")


def _check_int(value: object, name: str, *, minimum: int | None = None) -> int:
    # bool is an int subclass; True as a step or seq_len is always a caller bug.
    if isinstance(value, bool) or not isinstance(value, int):
        raise DatasetError(f"{name} must be an int, got {value!r}")
    if minimum is not None and value < minimum:
        raise DatasetError(f"{name} must be >= {minimum}, got {value}")
    return value


# --------------------------------------------------------------------------- corpus


def file_header(relative_path: str) -> bytes:
    """The line that precedes each file in a multi-file corpus; it tells the model where a file starts."""
    return f"# file: {relative_path}\n".encode("utf-8")


def _utf8_prefix(data: bytes, limit: int) -> bytes:
    # Cut at a character boundary so a truncated corpus stays valid UTF-8.
    if len(data) <= limit:
        return data
    end = limit
    while end > 0 and (data[end] & 0xC0) == 0x80:
        end -= 1
    return data[:end]


def _text_problem(data: bytes) -> str | None:
    """Why ``data`` is not UTF-8 text, or None."""
    nul = data.find(b"\0")
    if nul >= 0:
        return f"binary file (NUL byte at offset {nul})"
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not UTF-8 text (invalid byte at offset {exc.start})"
    return None


def _walk_files(
    root: Path,
    *,
    regular_only: bool,
    skip_dir: Callable[[str], bool],
    keep_file: Callable[[str], bool],
    strict: bool,
) -> list[tuple[str, Path]]:
    """(relative posix path, absolute path) of the files under ``root``, sorted by relative path.

    Directory symlinks are never followed (no loops, nothing outside ``root``). With ``regular_only``,
    file symlinks, sockets, fifos etc. are skipped; otherwise file symlinks count if they point at a file.
    With ``strict``, an unreadable directory is an error rather than silently missing from the corpus.
    """

    def unreadable(exc: OSError) -> None:
        if strict:
            raise DatasetError(f"cannot read directory {exc.filename}: {exc.strerror or exc}")

    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable, followlinks=False):
        dirnames[:] = [d for d in dirnames if not skip_dir(d)]
        for name in filenames:
            if not keep_file(name):
                continue
            full = Path(dirpath) / name
            try:
                mode = os.lstat(full).st_mode if regular_only else os.stat(full).st_mode
            except OSError:
                continue  # vanished or dangling link
            if not stat.S_ISREG(mode):
                continue
            found.append((full.relative_to(root).as_posix(), full))
    # Plain string order of the posix relative path: simple to state, identical on every machine.
    found.sort(key=lambda item: item[0])
    return found


def _concat_files(
    files: Iterable[tuple[str, Path]],
    max_bytes: int | None,
    *,
    on_bad: Callable[[Path, str], None],
) -> bytes:
    """Header + content of each file, in order, stopping at the first file that would pass ``max_bytes``."""
    parts: list[bytes] = []
    total = 0
    for rel, full in files:
        if "\n" in rel or "\r" in rel:
            on_bad(full, "file name contains a line break, which would break its header line")
            continue
        try:
            rel.encode("utf-8")
        except UnicodeEncodeError:
            on_bad(full, "file name is not valid UTF-8")
            continue
        try:
            content = full.read_bytes()
        except OSError as exc:
            raise DatasetError(f"cannot read {full}: {exc.strerror or exc}") from exc
        problem = _text_problem(content)
        if problem is not None:
            on_bad(full, problem)
            continue
        piece = file_header(rel) + content
        if max_bytes is not None and total + len(piece) > max_bytes:
            if not parts:
                # Even the first file does not fit: a cut file beats an empty corpus.
                parts.append(_utf8_prefix(piece, max_bytes))
            break
        parts.append(piece)
        total += len(piece)
    return b"".join(parts)


def _check_max_bytes(max_bytes: object) -> int | None:
    if max_bytes is None:
        return None
    return _check_int(max_bytes, "max_bytes", minimum=1)


def _stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def default_corpus(max_bytes: int = DEFAULT_CORPUS_BYTES) -> tuple[str, bytes]:
    """The Python standard library's own ``.py`` sources: real text that every machine has, no download.

    Files are sorted by path relative to the stdlib directory, each preceded by ``# file: REL\\n``, and
    the result stops at the last whole file that fits in ``max_bytes`` (only a first file larger than
    ``max_bytes`` is cut). ``site-packages``/``dist-packages`` and anything that is not a regular file
    are left out, as are the few deliberately non-UTF-8 test files. Deterministic for a given Python
    install; other installs give other bytes, which is fine because participants fetch the
    orchestrator's shards by hash rather than regenerating them.

    Returns ``(name, corpus)``, name like ``"python-stdlib-3.11.7"``.
    """
    limit = _check_max_bytes(max_bytes)
    root = _stdlib_dir()
    if not root.is_dir():
        raise DatasetError(f"the Python standard library directory {root} does not exist")
    excluded = {"site-packages", "dist-packages"}
    files = _walk_files(
        root,
        regular_only=True,
        skip_dir=lambda d: d in excluded or d == "__pycache__",
        keep_file=lambda f: f.endswith(".py"),
        strict=False,
    )
    # The stdlib test suite carries a few files in legacy encodings or with NULs on purpose; skip them
    # rather than fail, the corpus is meant to be UTF-8 text like load_corpus's.
    corpus = _concat_files(files, limit, on_bad=lambda path, why: None)
    if not corpus:
        raise DatasetError(f"no Python source files found under {root}")
    v = sys.version_info
    return f"python-stdlib-{v.major}.{v.minor}.{v.micro}", corpus


def load_corpus(path: Path | str, max_bytes: int | None = None) -> tuple[str, bytes]:
    """A user-supplied corpus: one UTF-8 text file, or a directory of them.

    A file is taken as is. A directory is read recursively (hidden files and directories skipped,
    directory symlinks not followed), files sorted by relative path and each preceded by
    ``# file: REL\\n``, as in :func:`default_corpus`. ``max_bytes`` truncates the same way (files past
    the cut are not read, so not checked either). A binary
    (NUL bytes) or non-UTF-8 file, a missing path and an empty result are refused with
    :class:`DatasetError` naming the path. Returns ``(name, corpus)``, name = the file or directory name.
    """
    limit = _check_max_bytes(max_bytes)
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetError(f"corpus path {path} does not exist")

    def refuse(bad: Path, why: str) -> None:
        raise DatasetError(f"corpus file {bad}: {why}; the corpus must be UTF-8 text")

    if path.is_file():
        try:
            content = path.read_bytes()
        except OSError as exc:
            raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from exc
        problem = _text_problem(content)
        if problem is not None:
            refuse(path, problem)
        corpus = content if limit is None else _utf8_prefix(content, limit)
    elif path.is_dir():
        files = _walk_files(
            path,
            regular_only=False,
            skip_dir=lambda d: d.startswith("."),
            keep_file=lambda f: not f.startswith("."),
            strict=True,
        )
        corpus = _concat_files(files, limit, on_bad=refuse)
    else:
        raise DatasetError(f"corpus path {path} is neither a regular file nor a directory")
    if not corpus:
        raise DatasetError(f"corpus at {path} is empty")
    name = path.resolve().name or "corpus"
    return name, corpus


# --------------------------------------------------------------------------- manifest

Sha256Str = Annotated[str, StringConstraints(strict=True, pattern=r"^[0-9a-f]{64}$")]


class ShardInfo(BaseModel):
    """One shard: its position in the corpus, its content hash (its name everywhere) and its size."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    index: Annotated[StrictInt, Field(ge=0)]
    sha256: Sha256Str
    size: Annotated[StrictInt, Field(ge=1)]


class DatasetManifest(BaseModel):
    """What a dataset is: its shards in corpus order, and where the held-out range starts.

    Shards ``index < heldout_start`` are for training, the rest are held out for validation only.
    The validators below make a manifest received over the network safe to sample from: indexes are
    0..n-1 in order, every shard but the last is exactly ``shard_size`` bytes, sizes add up to
    ``total_bytes``, and both ranges are non-empty.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[StrictStr, Field(min_length=1)]
    total_bytes: Annotated[StrictInt, Field(ge=2)]
    shard_size: Annotated[StrictInt, Field(ge=1)]
    shards: list[ShardInfo]
    heldout_start: StrictInt

    @model_validator(mode="after")
    def _consistent(self) -> "DatasetManifest":
        n = len(self.shards)
        if n < 2:
            raise ValueError(f"a dataset needs at least 2 shards (one for training, one held out), got {n}")
        for position, shard in enumerate(self.shards):
            if shard.index != position:
                raise ValueError(f"shard at position {position} has index {shard.index}; indexes must be 0..{n - 1} in order")
            if position < n - 1 and shard.size != self.shard_size:
                raise ValueError(f"shard {position} is {shard.size} bytes; every shard but the last must be shard_size={self.shard_size}")
        if self.shards[-1].size > self.shard_size:
            raise ValueError(f"last shard is {self.shards[-1].size} bytes, more than shard_size={self.shard_size}")
        total = sum(s.size for s in self.shards)
        if total != self.total_bytes:
            raise ValueError(f"shard sizes add up to {total}, not total_bytes={self.total_bytes}")
        if not 1 <= self.heldout_start <= n - 1:
            raise ValueError(f"heldout_start must be in 1..{n - 1} so both ranges are non-empty, got {self.heldout_start}")
        return self

    @property
    def train_shards(self) -> list[ShardInfo]:
        return self.shards[: self.heldout_start]

    @property
    def heldout_shards(self) -> list[ShardInfo]:
        return self.shards[self.heldout_start :]

    def shard(self, index: int) -> ShardInfo:
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(self.shards):
            raise DatasetError(f"dataset {self.name!r} has no shard {index!r} (it has {len(self.shards)})")
        return self.shards[index]

    def canonical_json(self) -> bytes:
        """Sorted keys, no whitespace, ASCII only: the same bytes from the same manifest everywhere."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")

    def manifest_id(self) -> str:
        """sha256 of :meth:`canonical_json`: names this exact dataset (content, split and all)."""
        return sha256_hex(self.canonical_json())


def build_dataset(
    name: str,
    corpus: bytes,
    shard_size: int = DEFAULT_SHARD_SIZE,
    heldout_fraction: float = DEFAULT_HELDOUT_FRACTION,
) -> tuple[DatasetManifest, dict[str, bytes]]:
    """Cut ``corpus`` into consecutive ``shard_size`` shards (the last may be short).

    The last ``max(1, round(n * heldout_fraction))`` shards are held out (one more when the last
    shard is shorter than half a shard, so held-out windows always exist), but never all of them: at
    least one shard always stays for training. Returns the manifest and ``{sha256: shard bytes}``
    (identical shards share one entry).
    """
    corpus = _as_bytes(corpus, "corpus")
    shard_size = _check_int(shard_size, "shard_size", minimum=1)
    if isinstance(heldout_fraction, bool) or not isinstance(heldout_fraction, (int, float)) or not 0 < heldout_fraction < 1:
        raise DatasetError(f"heldout_fraction must be a number strictly between 0 and 1, got {heldout_fraction!r}")
    if not isinstance(name, str) or not name:
        raise DatasetError("a dataset needs a non-empty name")
    size = len(corpus)
    n = -(-size // shard_size)
    if n < 2:
        raise DatasetError(
            f"dataset {name!r} is {size} bytes, which makes {n} shard(s) of shard_size={shard_size}; at least 2 are "
            f"needed (one for training, one held out): use a smaller shard size (--shard-size-kb"
            + (f"; at most {size // 2} bytes for this dataset" if size >= 2 else "")
            + ") or a bigger dataset (--dataset, --dataset-max-mb)"
        )
    heldout = max(1, round(n * heldout_fraction))
    if size - (n - 1) * shard_size < shard_size // 2:
        # The last shard is a short tail: it may not hold a single window, so hold one
        # more out — validators need held-out windows to exist.
        heldout += 1
    heldout = min(heldout, n - 1)
    shards: dict[str, bytes] = {}
    infos: list[ShardInfo] = []
    for index in range(n):
        chunk = corpus[index * shard_size : (index + 1) * shard_size]
        digest = sha256_hex(chunk)
        shards[digest] = chunk
        infos.append(ShardInfo(index=index, sha256=digest, size=len(chunk)))
    manifest = DatasetManifest(name=name, total_bytes=size, shard_size=shard_size, shards=infos, heldout_start=n - heldout)
    return manifest, shards


# --------------------------------------------------------------------------- storage




class ShardStore:
    """Content-addressed shards (``DIR/shards/<sha256>``) and manifests (``DIR/manifests/<id>.json``).

    Every read is verified against its name, so a corrupt or truncated file is refused, never served.
    Only well-formed hashes become file names, so a request cannot reach outside the directory.
    """

    def __init__(self, directory: Path | str):
        self.directory = Path(directory).expanduser()
        self.shards_dir = self.directory / "shards"
        self.manifests_dir = self.directory / "manifests"
        self.shards_dir.mkdir(parents=True, exist_ok=True)
        self.manifests_dir.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.directory)!r})"

    def path(self, sha: str) -> Path:
        return self.shards_dir / _check_sha256(sha)

    def has(self, sha: str) -> bool:
        """Present on disk (not verified; :meth:`get` verifies)."""
        return self.path(sha).is_file()

    def put(self, data: bytes) -> str:
        data = _as_bytes(data, "shard data")
        sha = sha256_hex(data)
        self._write(sha, data)
        return sha

    def _write(self, sha: str, data: bytes) -> None:
        # Always rewrite: cheap, idempotent, and it repairs a corrupt file with the same name.
        atomic_write(self.path(sha), data)

    def get(self, sha: str) -> bytes:
        path = self.path(sha)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise MissingShardError(f"no shard {sha} in {self.shards_dir}") from None
        except OSError as exc:
            raise DatasetError(f"cannot read shard file {path}: {exc.strerror or exc}") from exc
        actual = sha256_hex(data)
        if actual != sha:
            raise DatasetError(f"shard file {path} is corrupt: its {len(data)} bytes hash to {actual}, not {sha}")
        return data

    def discard(self, sha: str) -> None:
        """Remove a shard file if present (used to drop a corrupt cached copy)."""
        try:
            self.path(sha).unlink()
        except FileNotFoundError:
            pass

    def _manifest_path(self, manifest_id: str) -> Path:
        return self.manifests_dir / f"{_check_sha256(manifest_id, 'manifest id')}.json"

    def save_manifest(self, manifest: DatasetManifest) -> str:
        manifest_id = manifest.manifest_id()
        atomic_write(self._manifest_path(manifest_id), manifest.canonical_json())
        return manifest_id

    def load_manifest(self, manifest_id: str) -> DatasetManifest:
        path = self._manifest_path(manifest_id)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise MissingShardError(f"no manifest {manifest_id} in {self.manifests_dir}") from None
        except OSError as exc:
            raise DatasetError(f"cannot read manifest file {path}: {exc.strerror or exc}") from exc
        try:
            manifest = DatasetManifest.model_validate_json(raw)
        except ValueError as exc:  # pydantic.ValidationError is a ValueError
            raise DatasetError(f"manifest file {path} is corrupt: {exc}") from exc
        if manifest.manifest_id() != manifest_id:
            raise DatasetError(f"manifest file {path} is corrupt: its content has id {manifest.manifest_id()}")
        return manifest

    def save_dataset(self, manifest: DatasetManifest, shards: dict[str, bytes]) -> str:
        """Store every shard of ``manifest`` (verified) and the manifest itself; returns the manifest id."""
        for info in manifest.shards:
            data = shards.get(info.sha256)
            if data is None:
                raise DatasetError(f"shard {info.index} ({info.sha256}) of {manifest.name!r} is missing from the shards given")
            data = _as_bytes(data, f"shard {info.index}")
            if len(data) != info.size or sha256_hex(data) != info.sha256:
                raise DatasetError(f"shard {info.index} given for {manifest.name!r} does not match its hash {info.sha256}")
            self._write(info.sha256, data)
        return self.save_manifest(manifest)


FetchResult = Union[bytes, bytearray, memoryview]
Fetch = Callable[[str], Union[FetchResult, Awaitable[FetchResult]]]


class ShardCache:
    """Client-side shards: served from disk when present and valid, otherwise fetched, verified, stored.

    ``fetch(sha)`` returns the shard's bytes (typically a GET to the orchestrator). It may be a plain
    function (use :meth:`get`, or :meth:`aget` which runs it in a thread) or a coroutine function (use
    :meth:`aget`). Fetched bytes that do not hash to ``sha`` are refused and nothing is cached; a
    corrupt copy on disk is dropped and fetched again.
    """

    def __init__(self, directory: Path | str, fetch: Fetch):
        self.store = ShardStore(directory)
        self.fetch = fetch

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.store.directory)!r})"

    @property
    def directory(self) -> Path:
        return self.store.directory

    def has(self, sha: str) -> bool:
        return self.store.has(sha)

    def path(self, sha: str) -> Path:
        return self.store.path(sha)

    def _cached(self, sha: str) -> bytes | None:
        try:
            return self.store.get(sha)
        except MissingShardError:
            return None
        except DatasetError as exc:
            log.warning("%s; fetching it again", exc)
            self.store.discard(sha)
            return None

    def _accept(self, sha: str, data: object) -> bytes:
        data = _as_bytes(data, f"shard {sha} from the orchestrator")
        actual = sha256_hex(data)
        if actual != sha:
            raise DatasetError(
                f"shard {sha} from the orchestrator does not match its hash "
                f"(got {len(data)} bytes hashing to {actual}); not cached"
            )
        self.store._write(sha, data)
        return data

    def get(self, sha: str) -> bytes:
        _check_sha256(sha)
        data = self._cached(sha)
        if data is not None:
            return data
        fetched = self.fetch(sha)
        if inspect.isawaitable(fetched):
            if inspect.iscoroutine(fetched):
                fetched.close()  # no "never awaited" warning
            raise TypeError("this ShardCache's fetch is async: use `await cache.aget(sha)`")
        return self._accept(sha, fetched)

    async def aget(self, sha: str) -> bytes:
        _check_sha256(sha)
        data = self._cached(sha)
        if data is not None:
            return data
        if inspect.iscoroutinefunction(self.fetch):
            fetched: Any = await self.fetch(sha)
        else:
            # A blocking fetch must not stall the event loop (heartbeats, the miner's HTTP API).
            fetched = await asyncio.to_thread(self.fetch, sha)
            if inspect.isawaitable(fetched):
                fetched = await fetched
        return self._accept(sha, fetched)

    def reader(self, manifest: DatasetManifest, *, keep: int = 8) -> Callable[[int], bytes]:
        """``index -> shard bytes`` for ``manifest`` (for :func:`windows_to_tensor`), via :meth:`get`."""
        return shard_reader(manifest, self.get, keep=keep)


def shard_reader(manifest: DatasetManifest, get: Callable[[str], bytes], *, keep: int = 8) -> Callable[[int], bytes]:
    """Map shard index -> bytes through ``get(sha)`` (a store's or cache's), keeping the last ``keep`` in memory.

    The memory copy matters: training draws windows from the same few shards step after step, and
    re-reading and re-hashing a 1 MiB shard per window would dominate a small model's step.
    """
    keep = _check_int(keep, "keep", minimum=0)
    recent: OrderedDict[int, bytes] = OrderedDict()

    def read(index: int) -> bytes:
        if index in recent:
            recent.move_to_end(index)
            return recent[index]
        data = get(manifest.shard(index).sha256)
        if keep:
            recent[index] = data
            if len(recent) > keep:
                recent.popitem(last=False)
        return data

    return read


# --------------------------------------------------------------------------- sampling


class DeterministicRNG:
    """SHA-256 in counter mode: the same stream for the same key on every machine, forever.

    Block ``i`` is ``sha256(sha256(key) || i as 8 bytes big-endian)``; each block yields four
    big-endian uint64s. ``key`` is the canonical JSON (sorted keys, no whitespace, ASCII) of
    ``[domain, *parts]``, with parts restricted to ints and strings so the encoding is unambiguous.
    :meth:`below` maps draws to ``[0, n)`` by rejection sampling, so it is exactly uniform.
    """

    def __init__(self, domain: str, *parts: int | str):
        for part in (domain, *parts):
            if isinstance(part, bool) or not isinstance(part, (int, str)):
                raise DatasetError(f"RNG key parts must be ints or strings, got {part!r}")
        key = json.dumps([domain, *parts], separators=(",", ":"), ensure_ascii=True).encode("ascii")
        self._key = hashlib.sha256(key).digest()
        self._counter = 0
        self._buffer: list[int] = []

    def uint64(self) -> int:
        if not self._buffer:
            block = hashlib.sha256(self._key + self._counter.to_bytes(8, "big")).digest()
            self._counter += 1
            # Reversed so pop() hands them out in block order.
            self._buffer = [int.from_bytes(block[i : i + 8], "big") for i in (24, 16, 8, 0)]
        return self._buffer.pop()

    def below(self, n: int) -> int:
        if n < 1 or n > 2**64:
            raise DatasetError(f"cannot draw below {n}")
        limit = 2**64 - (2**64 % n)  # largest multiple of n that fits: no modulo bias
        while True:
            x = self.uint64()
            if x < limit:
                return x % n


def _draw_windows(rng: DeterministicRNG, shards: Sequence[ShardInfo], count: int, seq_len: int, what: str) -> list[tuple[int, int]]:
    # Uniform over every window of seq_len+1 bytes that lies inside one shard: each eligible shard of
    # size s offers s - seq_len start offsets; draw one position in their concatenation.
    window = seq_len + 1
    eligible = [s for s in shards if s.size >= window]
    if not eligible:
        largest = max((s.size for s in shards), default=0)
        raise DatasetError(
            f"no {what} shard holds a window of seq_len+1 = {window} bytes (the largest is {largest} bytes): "
            f"use a smaller seq_len or build the dataset with bigger shards (--shard-size-kb)"
        )
    ends: list[int] = []
    total = 0
    for s in eligible:
        total += s.size - seq_len
        ends.append(total)
    out: list[tuple[int, int]] = []
    for _ in range(count):
        u = rng.below(total)
        k = bisect.bisect_right(ends, u)
        start = ends[k - 1] if k else 0
        out.append((eligible[k].index, u - start))
    return out


def batch_offsets(
    manifest: DatasetManifest,
    *,
    seed: int,
    round: int,
    hotkey: str,
    step: int,
    batch_size: int,
    seq_len: int,
) -> list[tuple[int, int]]:
    """``(shard_index, byte_offset)`` of each sequence of a miner's batch, from training shards only.

    A pure function of its arguments, so a validator recomputes exactly what miner ``hotkey`` trained
    on at inner step ``step`` of round ``round``. Each window of ``seq_len + 1`` bytes (inputs plus the
    shifted targets) lies wholly inside one shard; shards shorter than that are skipped. Windows are
    uniform over all such windows of the training range; sequence ``j`` is the ``j``-th draw, so a
    bigger batch extends a smaller one.
    """
    _check_int(seed, "seed")
    _check_int(round, "round", minimum=0)
    _check_int(step, "step", minimum=0)
    _check_int(batch_size, "batch_size", minimum=1)
    _check_int(seq_len, "seq_len", minimum=1)
    if not isinstance(hotkey, str) or not hotkey:
        raise DatasetError(f"hotkey must be a non-empty string, got {hotkey!r}")
    rng = DeterministicRNG("tensorswarm/batch/v1", seed, round, hotkey, step)
    return _draw_windows(rng, manifest.train_shards, batch_size, seq_len, "training")


def heldout_offsets(manifest: DatasetManifest, *, seed: int, round: int, count: int, seq_len: int) -> list[tuple[int, int]]:
    """``count`` validation windows of ``seq_len + 1`` bytes for round ``round``, from held-out shards only."""
    _check_int(seed, "seed")
    _check_int(round, "round", minimum=0)
    _check_int(count, "count", minimum=1)
    _check_int(seq_len, "seq_len", minimum=1)
    rng = DeterministicRNG("tensorswarm/heldout/v1", seed, round)
    return _draw_windows(rng, manifest.heldout_shards, count, seq_len, "held-out")


def windows_to_tensor(shards: Callable[[int], bytes], offsets: Sequence[tuple[int, int]], seq_len: int) -> torch.Tensor:
    """The windows as a ``LongTensor`` of shape ``(len(offsets), seq_len + 1)``, one byte value per entry.

    ``shards(index)`` returns a shard's bytes (e.g. :meth:`ShardCache.reader`); each shard is asked for
    once per call. Use ``x[:, :-1]`` as inputs and ``x[:, 1:]`` as targets.
    """
    seq_len = _check_int(seq_len, "seq_len", minimum=1)
    window = seq_len + 1
    rows = np.empty((len(offsets), window), dtype=np.uint8)
    loaded: dict[int, bytes] = {}
    for row, (index, offset) in enumerate(offsets):
        if index not in loaded:
            loaded[index] = _as_bytes(shards(index), f"shard {index}")
        data = loaded[index]
        if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)) or offset < 0 or offset + window > len(data):
            raise DatasetError(f"window at offset {offset!r} of {window} bytes does not fit in shard {index} ({len(data)} bytes)")
        rows[row] = np.frombuffer(data, dtype=np.uint8, count=window, offset=int(offset))
    return torch.from_numpy(rows).to(torch.long)
