"""argparse ``type=`` helpers shared by every tensorswarm process: each takes the raw string (or an
already-typed value, so it can be used programmatically) and returns the converted value or raises
``argparse.ArgumentTypeError`` with a message that says what was expected. ``template.config.cli``
re-exports them (``tc.port``, ``tc.positive_int``, ...).
"""

from __future__ import annotations

import argparse
import math
import os
import re
from typing import Any
from urllib.parse import urlsplit

#: Network names the bittensor SDK resolves itself (``bittensor.settings.NETWORKS``).
KNOWN_NETWORKS = ("finney", "test", "archive", "devnet", "local")
#: Endpoint URL schemes accepted by ``--subtensor.chain_endpoint``.
ENDPOINT_SCHEMES = ("ws", "wss", "sim")

NETUID_MAX = 65535  # netuids are u16 on chain


# --------------------------------------------------------------------------- argparse types
# Each helper takes the raw string (or an already-typed value, so it can be used
# programmatically) and either returns the converted value or raises
# argparse.ArgumentTypeError with a message that says what was expected.


def _as_int(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise argparse.ArgumentTypeError(f"expected {what}, got {value!r}")
    if isinstance(value, int):
        return value
    try:
        return int(str(value).strip(), 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {value!r}") from None


def _as_float(value: Any, what: str) -> float:
    if isinstance(value, bool):
        raise argparse.ArgumentTypeError(f"expected {what}, got {value!r}")
    try:
        out = float(value if isinstance(value, (int, float)) else str(value).strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {value!r}") from None
    if not math.isfinite(out):
        raise argparse.ArgumentTypeError(f"expected {what}, got {value!r} (not finite)")
    return out


def integer(value: Any) -> int:
    """Any integer (bounds are left to whoever uses it, e.g. a pydantic model)."""
    return _as_int(value, "an integer")


def number(value: Any) -> float:
    """Any finite number (bounds are left to whoever uses it, e.g. a pydantic model)."""
    return _as_float(value, "a number")


def positive_int(value: Any) -> int:
    """An integer > 0."""
    out = _as_int(value, "a positive integer")
    if out <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return out


def non_negative_int(value: Any) -> int:
    """An integer >= 0."""
    out = _as_int(value, "an integer >= 0")
    if out < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value!r}")
    return out


def positive_float(value: Any) -> float:
    """A finite number > 0."""
    out = _as_float(value, "a positive number")
    if out <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value!r}")
    return out


def non_negative_float(value: Any) -> float:
    """A finite number >= 0."""
    out = _as_float(value, "a number >= 0")
    if out < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value!r}")
    return out


def port(value: Any) -> int:
    """A TCP port, 1..65535."""
    out = _as_int(value, "a port number (1-65535)")
    if not 1 <= out <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number (1-65535), got {value!r}")
    return out


def netuid(value: Any) -> int:
    """A subnet id, 0..65535."""
    out = _as_int(value, f"a netuid (0-{NETUID_MAX})")
    if not 0 <= out <= NETUID_MAX:
        raise argparse.ArgumentTypeError(f"expected a netuid (0-{NETUID_MAX}), got {value!r}")
    return out


_HOST_RE = re.compile(r"^[A-Za-z0-9._\-]+$|^\[[0-9A-Fa-f:.]+\]$")


def endpoint(value: Any) -> str:
    """A chain endpoint: ``ws://HOST[:PORT][/PATH]``, ``wss://...`` or ``sim://PATH``.

    ``sim://PATH`` names the state of the embedded local chain (``utils.localnet``);
    the path is passed on unchanged.
    """
    raw = str(value).strip()
    expected = "expected ws://HOST[:PORT], wss://HOST[:PORT] or sim://PATH"
    scheme, sep, rest = raw.partition("://")
    if not sep:
        raise argparse.ArgumentTypeError(f"invalid chain endpoint {raw!r}: {expected}")
    scheme = scheme.lower()
    if scheme not in ENDPOINT_SCHEMES:
        raise argparse.ArgumentTypeError(
            f"invalid chain endpoint {raw!r}: unsupported scheme {scheme + '://'!r}; {expected}"
        )
    if any(c.isspace() for c in rest):
        raise argparse.ArgumentTypeError(f"invalid chain endpoint {raw!r}: contains whitespace")
    if scheme == "sim":
        if not rest:
            raise argparse.ArgumentTypeError(
                f"invalid chain endpoint {raw!r}: sim:// needs the local chain's path, e.g. sim://./localnet"
            )
        return f"sim://{rest}"
    parts = urlsplit(f"{scheme}://{rest}")
    netloc_host = parts.netloc.rsplit("@", 1)[-1]
    host_part = netloc_host
    if host_part.startswith("["):
        host_part = host_part[: host_part.find("]") + 1] if "]" in host_part else host_part
    else:
        host_part = host_part.split(":", 1)[0]
    if not host_part or not _HOST_RE.match(host_part):
        raise argparse.ArgumentTypeError(f"invalid chain endpoint {raw!r}: missing or invalid host; {expected}")
    try:
        p = parts.port
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid chain endpoint {raw!r}: bad port (1-65535)") from None
    if p is None and netloc_host.endswith(":"):
        raise argparse.ArgumentTypeError(f"invalid chain endpoint {raw!r}: empty port")
    if p is not None and not 1 <= p <= 65535:
        raise argparse.ArgumentTypeError(f"invalid chain endpoint {raw!r}: bad port (1-65535)")
    if parts.query or parts.fragment:
        raise argparse.ArgumentTypeError(f"invalid chain endpoint {raw!r}: no query or fragment allowed")
    return f"{scheme}://{rest}"


def network(value: Any) -> str:
    """A network name the SDK knows (finney, test, archive, devnet, local) or an endpoint URL."""
    raw = str(value).strip()
    if raw in KNOWN_NETWORKS:
        return raw
    if "://" in raw:
        return endpoint(raw)
    raise argparse.ArgumentTypeError(
        f"unknown network {raw!r}: expected one of {', '.join(KNOWN_NETWORKS)} or a ws://, wss:// or sim:// endpoint"
    )


def wallet_name(value: Any) -> str:
    """A wallet or hotkey name: non-empty, one path component."""
    raw = str(value)
    if not raw or raw != raw.strip():
        raise argparse.ArgumentTypeError(f"expected a non-empty name without surrounding spaces, got {raw!r}")
    if raw in (".", "..") or "/" in raw or "\\" in raw or "\x00" in raw:
        raise argparse.ArgumentTypeError(f"expected a plain name (no path separators), got {raw!r}")
    return raw


def expanded_path(value: Any) -> str:
    """A filesystem path with ``~`` and environment variables expanded (need not exist)."""
    raw = str(value)
    if not raw.strip():
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    return os.path.expanduser(os.path.expandvars(raw))
