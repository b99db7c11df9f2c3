"""The one metagraph reader: the subnet's neurons, cached and refreshed in the background."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional, Union

import bittensor as bt

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Neuron:
    """The slice of a metagraph row that authorization needs."""

    uid: int
    hotkey: str
    coldkey: str
    validator_permit: bool
    stake: float  # total stake, in the subnet's alpha
    axon: Optional[str]


class MetagraphCache:
    """The subnet's metagraph, kept fresh for request authorization.

    ``client_factory`` is either a callable returning an unconnected
    ``bt.Client`` (the cache connects, owns and closes it, and rebuilds it
    after a failed refresh) or an already-connected ``bt.Client`` that the
    caller manages. ``start()`` and every other coroutine must run on the
    event loop that serves requests (e.g. in the app's lifespan).
    """

    def __init__(
        self,
        client_factory: Union[Callable[[], bt.Client], bt.Client],
        netuid: int,
        refresh_s: float = 12.0,
        miss_refresh_s: float = 2.0,
        *,
        fetch_timeout_s: float = 30.0,
    ):
        if isinstance(client_factory, bt.Client):
            self._factory: Optional[Callable[[], bt.Client]] = None
            self._client: Optional[bt.Client] = client_factory
        else:
            self._factory = client_factory
            self._client = None
        self.netuid = int(netuid)
        self.refresh_s = refresh_s
        self.miss_refresh_s = miss_refresh_s
        self.fetch_timeout_s = fetch_timeout_s
        self._by_hotkey: dict[str, Neuron] = {}
        self._block: Optional[int] = None
        self._fetched_at: Optional[float] = None  # monotonic, last success
        self._last_attempt = -math.inf  # monotonic, last fetch start
        self._generation = 0  # bumped per fetch attempt; lets waiters reuse one
        self._lock: Optional[asyncio.Lock] = None
        self._task: Optional[asyncio.Task] = None
        self.refresh_count = 0  # fetch attempts (tests and metrics)
        self.error_count = 0
        self.last_error: Optional[str] = None

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        """First fetch (failure is logged, not raised: the server still comes
        up and keeps retrying), then refresh every ``refresh_s`` in the background."""
        if self._task is not None:
            return
        self._lock = asyncio.Lock()
        await self.refresh()
        self._task = asyncio.create_task(self._loop(), name=f"metagraph-cache-{self.netuid}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._factory is not None:
            await self._drop_client()

    async def __aenter__(self) -> MetagraphCache:
        await self.start()
        return self

    async def __aexit__(self, *_exc) -> None:
        await self.stop()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception:  # never let the loop die; refresh() already logs
                log.exception("metagraph refresh loop error")

    # -- fetching ------------------------------------------------------------

    async def refresh(self) -> bool:
        """Fetch now (serialized with other refreshes). True on success; on
        failure the last good metagraph is kept."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            return await self._refresh_locked()

    async def _refresh_locked(self) -> bool:
        self._generation += 1
        self._last_attempt = time.monotonic()
        self.refresh_count += 1
        try:
            client = await self._get_client()
            graph = await asyncio.wait_for(
                client.subnets.metagraph(self.netuid, commitments=False),
                self.fetch_timeout_s,
            )
            if graph is None:
                raise LookupError(f"netuid {self.netuid} does not exist")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.error_count += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("metagraph refresh for netuid %s failed: %s", self.netuid, self.last_error)
            if self._factory is not None:
                await self._drop_client()  # a fresh connection next time
            return False
        self._by_hotkey = {
            n.hotkey: Neuron(
                uid=n.uid,
                hotkey=n.hotkey,
                coldkey=n.coldkey,
                validator_permit=n.validator_permit,
                stake=n.total_stake.rao / 1e9,
                axon=n.axon,
            )
            for n in graph.neurons
        }
        self._block = graph.block
        self._fetched_at = time.monotonic()
        return True

    async def _get_client(self) -> bt.Client:
        if self._client is None:
            client = self._factory()
            await client.connect()
            self._client = client
        return self._client

    async def _drop_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.close()
            except Exception:
                log.debug("closing metagraph client failed", exc_info=True)

    # -- reads ---------------------------------------------------------------

    def lookup(self, hotkey: str) -> Optional[Neuron]:
        """The cached neuron for a hotkey, or None (no I/O)."""
        return self._by_hotkey.get(hotkey)

    async def ensure(self, hotkey: str, *, require_permit: bool = False) -> Optional[Neuron]:
        """``lookup``, but a miss (unregistered, or no permit when
        ``require_permit``) refreshes first — at most once per
        ``miss_refresh_s`` across all callers, so a hotkey registered moments
        ago gets in within seconds while unknown callers cannot force a
        refresh storm. Concurrent misses share one in-flight refresh."""

        def satisfied(n: Optional[Neuron]) -> bool:
            return n is not None and (n.validator_permit or not require_permit)

        neuron = self.lookup(hotkey)
        if satisfied(neuron):
            return neuron
        if self._lock is None:
            self._lock = asyncio.Lock()
        seen = self._generation
        async with self._lock:
            # Someone refreshed while we queued: their answer is as new as ours would be.
            if self._generation == seen and time.monotonic() - self._last_attempt >= self.miss_refresh_s:
                await self._refresh_locked()
        return self.lookup(hotkey)

    def validators(self) -> list[Neuron]:
        return sorted((n for n in self._by_hotkey.values() if n.validator_permit), key=lambda n: n.uid)

    def neurons(self) -> list[Neuron]:
        return sorted(self._by_hotkey.values(), key=lambda n: n.uid)

    @property
    def block(self) -> Optional[int]:
        """Chain block of the cached metagraph (None before the first success)."""
        return self._block

    @property
    def age_s(self) -> float:
        """Seconds since the last successful fetch (inf before the first)."""
        return math.inf if self._fetched_at is None else time.monotonic() - self._fetched_at

    @property
    def loaded(self) -> bool:
        return self._fetched_at is not None
