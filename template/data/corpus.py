"""Building the run's corpus (the stdlib sources by default, or the owner's text) and cutting it into
content-addressed shards."""

from __future__ import annotations

import logging
import os
import stat
import sys
import sysconfig
from collections.abc import Callable, Iterable
from pathlib import Path

from template.data.checks import as_bytes, check_int
from template.wire.dataset import DatasetError, DatasetManifest, ShardInfo, sha256_hex

log = logging.getLogger(__name__)

DEFAULT_CORPUS_BYTES = 16 * 2**20
DEFAULT_SHARD_SIZE = 2**20
DEFAULT_HELDOUT_FRACTION = 0.05


# --------------------------------------------------------------------------- corpus


def file_header(relative_path: str) -> bytes:
    """The line that precedes each file in a multi-file corpus; it tells the model where a file starts."""
    return f"# file: {relative_path}\n".encode()


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
    return check_int(max_bytes, "max_bytes", minimum=1)


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


def heldout_count(n: int, last_size: int, shard_size: int, heldout_fraction: float) -> int:
    """How many of ``n`` shards (the last one ``last_size`` bytes) are held out: ``max(1, round(n *
    heldout_fraction))``, one more when the last shard is shorter than half a shard (so held-out windows
    always exist), never all of them."""
    heldout = max(1, round(n * heldout_fraction))
    if last_size < shard_size // 2:
        heldout += 1  # a short tail may not hold a single window
    return min(heldout, n - 1)


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
    corpus = as_bytes(corpus, "corpus")
    shard_size = check_int(shard_size, "shard_size", minimum=1)
    if (
        isinstance(heldout_fraction, bool)
        or not isinstance(heldout_fraction, (int, float))
        or not 0 < heldout_fraction < 1
    ):
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
    heldout = heldout_count(n, size - (n - 1) * shard_size, shard_size, heldout_fraction)
    shards: dict[str, bytes] = {}
    infos: list[ShardInfo] = []
    for index in range(n):
        chunk = corpus[index * shard_size : (index + 1) * shard_size]
        digest = sha256_hex(chunk)
        shards[digest] = chunk
        infos.append(ShardInfo(index=index, sha256=digest, size=len(chunk)))
    manifest = DatasetManifest(
        name=name, total_bytes=size, shard_size=shard_size, shards=infos, heldout_start=n - heldout
    )
    return manifest, shards


def build_run_dataset(
    path: Path | str | None,
    put: Callable[[bytes], str],
    max_bytes: int | None = DEFAULT_CORPUS_BYTES,
    shard_size: int = DEFAULT_SHARD_SIZE,
    heldout_fraction: float = DEFAULT_HELDOUT_FRACTION,
    vocab_size: int | None = None,
) -> DatasetManifest:
    """A run's dataset from ``--dataset``: a directory of token files (:mod:`template.data.tokens`, streamed
    from disk), else text (:func:`load_corpus`; the stdlib corpus when ``path`` is None), cut into shards
    that ``put`` stores; returns the manifest."""
    from template.data.tokens import ingest_tokens, is_token_dir

    if path is not None and is_token_dir(Path(path)):
        return ingest_tokens(
            Path(path), put, shard_size=shard_size, heldout_fraction=heldout_fraction, vocab_size=vocab_size
        )
    name, corpus = (
        load_corpus(path, max_bytes=max_bytes)
        if path is not None
        else default_corpus(max_bytes or DEFAULT_CORPUS_BYTES)
    )
    manifest, blobs = build_dataset(name, corpus, shard_size=shard_size, heldout_fraction=heldout_fraction)
    for data in blobs.values():
        put(data)
    return manifest
