"""Hosts on one machine, for multi-host tests and benchmarks: Linux network namespaces, each with its own
address on a bridge, like machines on one switch. Needs root and iproute2 (``ip``).

    with Hosts(3) as hosts:                   # a bridge 10.N.0.1/24 and namespaces 10.N.0.2, .3, .4
        hosts.run(0, ["python", ...])         # a process inside host 0 (its address: hosts.ip(0))
        hosts.bridge_ip                       # reachable from every host: the "switch" side

Everything is removed on exit (also after an error). ``rate_mbit`` caps each host's link with
``tc … tbf`` (both directions), as home links are capped.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Optional

__all__ = ["Hosts", "unavailable"]


def unavailable() -> Optional[str]:
    """Why namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (ip) is not installed"
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class Hosts:
    """``n`` network namespaces on a fresh bridge (see the module docstring)."""

    def __init__(self, n: int, rate_mbit: Optional[float] = None):
        self.n, self.rate_mbit = n, rate_mbit
        tag = secrets.token_hex(3)
        self.subnet = f"10.{100 + secrets.randbelow(150)}.{secrets.randbelow(250)}"
        self.bridge = f"tsbr{tag}"
        self.names = [f"ts{tag}h{i}" for i in range(n)]
        self._made: list[tuple[str, str]] = []  # ("ns"|"link", name), undone in reverse

    @property
    def bridge_ip(self) -> str:
        return f"{self.subnet}.1"

    def ip(self, i: int) -> str:
        return f"{self.subnet}.{i + 2}"

    def __enter__(self) -> Hosts:
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            self._made.append(("link", self.bridge))
            _ip("addr", "add", f"{self.bridge_ip}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for i, ns in enumerate(self.names):
                _ip("netns", "add", ns)
                self._made.append(("ns", ns))
                outside, inside = f"{ns}o", f"{ns}i"
                _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
                self._made.append(("link", outside))
                _ip("link", "set", inside, "netns", ns)
                _ip("link", "set", outside, "master", self.bridge)
                _ip("link", "set", outside, "up")
                _ip("-n", ns, "addr", "add", f"{self.ip(i)}/24", "dev", inside)
                _ip("-n", ns, "link", "set", inside, "up")
                _ip("-n", ns, "link", "set", "lo", "up")
                _ip("-n", ns, "route", "add", "default", "via", self.bridge_ip)
                if self.rate_mbit:
                    for dev, where in ((outside, []), (inside, ["ip", "netns", "exec", ns])):
                        subprocess.run(
                            [*where, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", f"{self.rate_mbit}mbit"]
                            + ["burst", "64kb", "latency", "50ms"],
                            check=True,
                            capture_output=True,
                        )
        except BaseException:
            self.close()
            raise
        return self

    def command(self, i: int, argv: list[str]) -> list[str]:
        """``argv`` run inside host ``i``."""
        return ["ip", "netns", "exec", self.names[i], *argv]

    def run(self, i: int, argv: list[str], **kw) -> subprocess.Popen:
        return subprocess.Popen(self.command(i, argv), **kw)

    def counters(self, i: int) -> tuple[int, int]:
        """(bytes host ``i`` sent, bytes it received) so far: its link's counters on the bridge side,
        where everything it sends or receives crosses, whoever the peer."""
        stats = Path("/sys/class/net") / f"{self.names[i]}o" / "statistics"
        # The bridge side receives what the host sends.
        return int((stats / "rx_bytes").read_text()), int((stats / "tx_bytes").read_text())

    def close(self) -> None:
        for kind, name in reversed(self._made):
            try:
                _ip("netns", "del", name) if kind == "ns" else _ip("link", "del", name)
            except subprocess.CalledProcessError:
                pass  # already gone (a veth goes with its namespace)
        self._made.clear()

    def __exit__(self, *exc) -> None:
        self.close()
