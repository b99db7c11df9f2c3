"""A member that breaks the rendezvous so that nobody can name it, for tests only: runs the production
neurons/miner.py, checks in, reaches the store and posts its signed presence, then posts as its gloo
address a socket of its own that accepts connections (the kernel does) and never answers, and never
connects to anyone. Every honest rank's connect times out with nothing to blame ("Connect timeout
[none]"): no address refuses, no key is missing. Only the orchestrator's tests (re-forming without one
member at a time) find it.

    python tests/adversaries/mute_saboteur.py <miner.py flags>
"""

from __future__ import annotations

import os
import socket
import struct
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, os.fspath(REPO))

from tests.adversaries import run_miner_with_init  # noqa: E402


def main() -> int:

    from template.miner.group import GLOO_ADDRESS_KEY, GLOO_SOCKADDR_AT

    def init_process_group(*_args, store=None, rank=None, world_size=None, **_kw):
        # Never accept()ed, never answered; on a port above the ephemeral range, so that its address sorts
        # above every honest rank's and they wait for it to connect (gloo's rule): their connect times out.
        mute = None
        for port in range(65000, 61000, -1):
            try:
                mute = socket.create_server(("127.0.0.1", port), backlog=64)
                break
            except OSError:
                continue
        peer = 1 if rank == 0 else 0
        store.wait([GLOO_ADDRESS_KEY.format(rank=peer)])
        blob = bytearray(store.get(GLOO_ADDRESS_KEY.format(rank=peer)))  # a well-formed address to edit
        at = GLOO_SOCKADDR_AT
        blob[at + 2 : at + 4] = struct.pack("!H", mute.getsockname()[1])
        blob[at + 4 : at + 8] = socket.inet_aton("127.0.0.1")
        store.set(GLOO_ADDRESS_KEY.format(rank=rank), bytes(blob))
        while True:  # alive, heartbeating through its meta-miner, never connecting
            time.sleep(3600)

    return run_miner_with_init(init_process_group, sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
