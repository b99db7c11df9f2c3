"""The generation TCPStore, on loopback only, in a process of its own (``store_process.py``).

torch's libuv TCPStore server has no authentication, so nothing outside this machine reaches it
directly: it listens on a socket the orchestrator binds to 127.0.0.1 (torch's own would listen on every
interface) and hands to the store's process, and ranks come in through the members-only tunnel
(``store_tunnel.py``), which forwards only keys under the generation's prefix; every key of an ended
generation is deleted. The store's process is the only one that imports torch, and it exits when the
orchestrator closes its stdin (or dies).
"""

from __future__ import annotations

import json
import logging
import select
import socket
import subprocess
import sys
import threading

log = logging.getLogger(__name__)

START_TIMEOUT_S = 120.0


class StoreHost:
    # The store's process: `-m orchestrator.store_process FD` (a test swaps in one that never starts).
    command = [sys.executable, "-m", "orchestrator.store_process"]

    def __init__(self):
        listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.address = listener.getsockname()
        self.port = self.address[1]
        fd = listener.fileno()
        self.proc = subprocess.Popen(
            [*self.command, str(fd)],
            pass_fds=(fd,),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        listener.close()  # the store's process holds it now
        self._lock = threading.Lock()  # one command on the pipe at a time
        # The first line, within a bound: a child that hangs on start (a stalled import) must not hang us.
        started, _, _ = select.select([self.proc.stdout], [], [], START_TIMEOUT_S)
        ready = self.proc.stdout.readline() if started else f"no line within {START_TIMEOUT_S:.0f}s"
        if ready.strip() != "ready":
            self.proc.kill()  # hung or failed: nothing of it to wait for
            self.close()
            raise RuntimeError(f"the TCPStore process did not start (exit {self.proc.returncode}): {ready!r}")

    def cleanup(self, keep_prefix: str | None) -> int:
        """Delete every key not under ``keep_prefix`` (ended generations' keys, and whatever a member
        wrote outside its generation's prefix); returns how many."""
        with self._lock:
            if self.proc.poll() is not None:
                log.error("the TCPStore process is gone (exit %s): no key deleted", self.proc.returncode)
                return 0
            try:
                self.proc.stdin.write(f"cleanup {json.dumps(keep_prefix)}\n")
                self.proc.stdin.flush()
                answer = self.proc.stdout.readline()
            except (OSError, ValueError) as error:  # closed meanwhile
                log.error("the TCPStore process did not answer: %s", error)
                return 0
        try:
            removed = int(answer)
        except ValueError:
            log.error("the TCPStore process answered %r", answer)
            return 0
        if removed:
            log.info("deleted %d store key(s) outside the current generation's prefix", removed)
        return removed

    def close(self) -> None:
        with self._lock:
            try:
                self.proc.stdin.close()  # its end of input: the store's process exits
            except OSError:
                pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
