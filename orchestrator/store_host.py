"""The generation TCPStore, hosted inside the orchestrator process, on loopback only.

torch's libuv TCPStore server runs on one background thread and sleeps in epoll between requests.
It has no authentication, so nothing outside this machine reaches it directly: it listens on a
socket bound to 127.0.0.1 (torch's own would listen on every interface), and ranks come in through
the members-only tunnel (``store_tunnel.py``), which forwards only keys under the generation's
prefix; every key of an ended generation is deleted.
"""

from __future__ import annotations

import datetime
import logging
import socket

log = logging.getLogger(__name__)


class StoreHost:
    def __init__(self):
        # Imported here, not with the module: torch is most of the orchestrator's memory (~210 MB), and the
        # run's dataset is built before the store starts, so its buffers and torch's never add up.
        import torch.distributed as dist

        listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.address = listener.getsockname()
        self.port = self.address[1]
        self.store = dist.TCPStore(
            "127.0.0.1",
            self.port,
            world_size=None,
            is_master=True,
            wait_for_workers=False,
            timeout=datetime.timedelta(seconds=30),
            use_libuv=True,
            master_listen_fd=listener.fileno(),
        )
        listener.detach()  # the store owns the socket now (and closes it)

    def cleanup(self, keep_prefix: str | None) -> int:
        """Delete every key not under ``keep_prefix`` (ended generations' keys, and whatever a member
        wrote outside its generation's prefix); returns how many."""
        removed = 0
        for key in self.store.list_keys():
            if keep_prefix is not None and key.startswith(keep_prefix + "/"):
                continue
            if self.store.delete_key(key):
                removed += 1
        if removed:
            log.info("deleted %d store key(s) outside the current generation's prefix", removed)
        return removed

    def close(self) -> None:
        # Dropping the last reference stops the libuv server thread.
        del self.store
