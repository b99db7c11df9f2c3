"""The generation TCPStore, hosted inside the orchestrator process.

torch's libuv TCPStore server runs on one background thread and sleeps in
epoll between requests (the seed design ran a separate process that
busy-looped a core). Ranks reach it at ``--tcp-store-host:--tcp-store-port``
and namespace every key under their generation's secret prefix
(``PrefixStore``); keys of ended generations are deleted.

The store has no authentication: anyone who can connect can read and list
keys. The prefix keeps generations apart and keeps out clients that were never
assigned, but cannot keep out a peer that scans the store: what protects the
model is that every contribution is signed by its sender's hotkey.
"""

from __future__ import annotations

import datetime
import logging

import torch.distributed as dist

log = logging.getLogger(__name__)


class StoreHost:
    def __init__(self, host: str, port: int, root: str = "ts"):
        self.root = root
        self.store = dist.TCPStore(
            host,
            port,
            world_size=None,
            is_master=True,
            wait_for_workers=False,
            timeout=datetime.timedelta(seconds=30),
            use_libuv=True,
        )
        self.host = host
        self.port = int(self.store.port)

    def cleanup(self, keep_prefix: str | None) -> int:
        """Delete every generation key not under ``keep_prefix``; returns how many."""
        removed = 0
        for key in self.store.list_keys():
            if not key.startswith(self.root + "/"):
                continue
            if keep_prefix is not None and key.startswith(keep_prefix + "/"):
                continue
            if self.store.delete_key(key):
                removed += 1
        if removed:
            log.info("deleted %d store key(s) of ended generations", removed)
        return removed

    def close(self) -> None:
        # Dropping the last reference stops the libuv server thread.
        del self.store
