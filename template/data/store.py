"""Where shards live: the orchestrator's content-addressed :class:`ShardStore` and a participant's verifying
:class:`ShardCache`; :func:`shard_reader` maps a shard index to bytes through either."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Union

from template.data.checks import as_bytes, check_int, check_sha256
from template.files import atomic_write
from template.wire.dataset import DatasetError, DatasetManifest, MissingShardError, sha256_hex

log = logging.getLogger(__name__)

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
        return self.shards_dir / check_sha256(sha)

    def has(self, sha: str) -> bool:
        """Present on disk (not verified; :meth:`get` verifies)."""
        return self.path(sha).is_file()

    def put(self, data: bytes) -> str:
        data = as_bytes(data, "shard data")
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
        return self.manifests_dir / f"{check_sha256(manifest_id, 'manifest id')}.json"

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
                raise DatasetError(
                    f"shard {info.index} ({info.sha256}) of {manifest.name!r} is missing from the shards given"
                )
            data = as_bytes(data, f"shard {info.index}")
            if len(data) != info.size or sha256_hex(data) != info.sha256:
                raise DatasetError(
                    f"shard {info.index} given for {manifest.name!r} does not match its hash {info.sha256}"
                )
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
        data = as_bytes(data, f"shard {sha} from the orchestrator")
        actual = sha256_hex(data)
        if actual != sha:
            raise DatasetError(
                f"shard {sha} from the orchestrator does not match its hash "
                f"(got {len(data)} bytes hashing to {actual}); not cached"
            )
        self.store._write(sha, data)
        return data

    def get(self, sha: str) -> bytes:
        check_sha256(sha)
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
        check_sha256(sha)
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
    keep = check_int(keep, "keep", minimum=0)
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
