"""The generation TCPStore's own process (``python -m orchestrator.store_process FD``), started by
``store_host.StoreHost``: torch's libuv TCPStore server on the listening socket it inherits as ``FD``
(bound to 127.0.0.1 by the orchestrator), serving until its stdin closes — when the orchestrator stops or
dies, so the store never outlives it.

Why a process of its own: torch is needed here only, and it is most of a Python process's memory
(~190 MB of private memory at import); the orchestrator itself then holds only what its own work needs.

Commands, one per line on stdin, answered one line each on stdout: ``cleanup <JSON prefix or null>``
deletes every key not under the prefix (null: every key) and answers how many it deleted.
"""

from __future__ import annotations

import datetime
import json
import signal
import socket
import sys


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C stops the orchestrator, which closes stdin
    fd = int(argv[0])
    listener = socket.socket(fileno=fd)
    address = listener.getsockname()
    listener.detach()  # the store takes the descriptor
    import torch.distributed as dist

    store = dist.TCPStore(
        address[0],
        address[1],
        world_size=None,
        is_master=True,
        wait_for_workers=False,
        timeout=datetime.timedelta(seconds=30),
        use_libuv=True,
        master_listen_fd=fd,
    )
    print("ready", flush=True)
    for line in sys.stdin:
        command, _, arg = line.strip().partition(" ")
        if command != "cleanup":
            print("error unknown command", flush=True)
            continue
        keep = json.loads(arg)
        removed = 0
        for key in store.list_keys():
            if keep is not None and key.startswith(keep + "/"):
                continue
            if store.delete_key(key):
                removed += 1
        print(removed, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
