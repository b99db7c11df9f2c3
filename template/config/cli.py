"""One command-line parser for every tensorswarm process.

Flags are bittensor-style dotted names (``--wallet.name``, ``--subtensor.network``) and the
parsed result is a :class:`Config` with nested attribute access::

    cfg = parse_config("validator", add_args=lambda p: p.add_argument("--axon.port", type=port))
    cfg.wallet.name, cfg.subtensor.network, cfg.netuid, cfg.axon.port

Dashes in flag names become underscores (``--orchestrator-url`` -> ``cfg.orchestrator_url``).

The ``type=`` helpers (``port``, ``positive_int``, ...) live in ``template.config.argtypes`` and are
re-exported here; flags derived from a pydantic model's fields are ``template.config.flags``.

Errors (unknown flags, bad values) print exactly one line, ``<prog>: error: <message>``, to stderr
and exit with status 2; ``--help`` works as usual.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NoReturn

from template.config.argtypes import (
    ENDPOINT_SCHEMES,
    KNOWN_NETWORKS,
    NETUID_MAX,
    endpoint,
    expanded_path,
    integer,
    netuid,
    network,
    non_negative_float,
    non_negative_int,
    number,
    port,
    positive_float,
    positive_int,
    wallet_name,
)

__all__ = [
    "ArgumentParser",
    "Config",
    "ENDPOINT_SCHEMES",
    "KNOWN_NETWORKS",
    "NETUID_MAX",
    "build_parser",
    "parse_config",
    "endpoint_of",
    "positive_int",
    "non_negative_int",
    "positive_float",
    "non_negative_float",
    "port",
    "netuid",
    "endpoint",
    "network",
    "wallet_name",
    "expanded_path",
    "integer",
    "number",
]

DEFAULT_NETUID = 1
DEFAULT_NETWORK = "local"
DEFAULT_WALLET_NAME = "default"
DEFAULT_WALLET_HOTKEY = "default"
DEFAULT_WALLET_PATH = "~/.bittensor/wallets"


# --------------------------------------------------------------------------- parser


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults and keeps the description's line breaks."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors: ``<prog>: error: <message>`` on stderr, exit status 2.

    Abbreviated long options are refused (``--wallet.n`` is an unknown flag, not ``--wallet.name``).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        one_line = " ".join(str(message).split())
        self.exit(2, f"{self.prog}: error: {one_line}\n")


def build_parser(
    prog: str,
    description: str = "",
    add_args: Callable[[argparse.ArgumentParser], None] | None = None,
    *,
    wallet: bool = True,
    chain: bool = True,
) -> argparse.ArgumentParser:
    """The shared parser: chain flags (``chain``), wallet flags (``wallet``), logging flags,
    then whatever ``add_args`` adds."""
    parser = ArgumentParser(prog=prog, description=description or None)
    if chain:
        g = parser.add_argument_group("chain")
        g.add_argument("--netuid", type=netuid, default=DEFAULT_NETUID, metavar="UID", help="subnet id")
        g.add_argument(
            "--subtensor.network",
            type=network,
            default=DEFAULT_NETWORK,
            metavar="NETWORK",
            help=f"network name ({', '.join(KNOWN_NETWORKS)}) or endpoint URL",
        )
        g.add_argument(
            "--subtensor.chain_endpoint",
            type=endpoint,
            default=None,
            metavar="URL",
            help="chain endpoint (ws://HOST:PORT, wss://HOST:PORT or sim://PATH); overrides --subtensor.network",
        )
    if wallet:
        g = parser.add_argument_group("wallet")
        g.add_argument(
            "--wallet.name", type=wallet_name, default=DEFAULT_WALLET_NAME, metavar="NAME", help="coldkey wallet name"
        )
        g.add_argument(
            "--wallet.hotkey", type=wallet_name, default=DEFAULT_WALLET_HOTKEY, metavar="NAME", help="hotkey name"
        )
        g.add_argument(
            "--wallet.path",
            type=expanded_path,
            default=os.path.expanduser(DEFAULT_WALLET_PATH),
            metavar="DIR",
            help="directory holding the wallets",
        )
    g = parser.add_argument_group("logging")
    g.add_argument("--logging.debug", action="store_true", help="log at DEBUG level")
    g.add_argument("--logging.trace", action="store_true", help="DEBUG level, including the bittensor SDK's logs")
    if add_args is not None:
        add_args(parser)
    return parser


def parse_config(
    prog: str,
    argv: Sequence[str] | None = None,
    add_args: Callable[[argparse.ArgumentParser], None] | None = None,
    description: str = "",
    **kw: Any,
) -> Config:
    """Parse ``argv`` (default ``sys.argv[1:]``) with :func:`build_parser` into a :class:`Config`.

    ``kw`` goes to :func:`build_parser` (``wallet=``, ``chain=``). Exits with status 2 on bad input.
    """
    parser = build_parser(prog, description, add_args, **kw)
    ns = parser.parse_args(None if argv is None else list(argv))
    try:
        return Config.from_namespace(ns)
    except ValueError as e:  # a flag set that cannot nest (programming error in add_args)
        parser.error(str(e))
        raise  # unreachable; keeps type checkers happy


# --------------------------------------------------------------------------- Config

_RESERVED = frozenset({"to_dict", "get", "from_dict", "from_namespace"})


class Config:
    """Parsed flags with nested attribute access (``cfg.wallet.name``).

    Also ``cfg["wallet"]["name"]``, ``cfg.get("wallet.name", default)``, ``"wallet" in cfg``,
    iteration over top-level keys and ``cfg.to_dict()``. Picklable.
    """

    def __init__(self, values: Mapping[str, Any] | None = None) -> None:
        for key, value in (values or {}).items():
            if isinstance(value, Mapping) and not isinstance(value, Config):
                value = Config(value)
            _check_key(key)
            object.__setattr__(self, key, value)

    # construction --------------------------------------------------------
    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Config:
        return cls(values)

    @classmethod
    def from_namespace(cls, ns: argparse.Namespace) -> Config:
        """Nest ``a.b.c`` dests; dashes become underscores. ValueError on conflicting keys."""
        root: dict[str, Any] = {}
        for dest, value in sorted(vars(ns).items()):
            parts = [p.replace("-", "_") for p in dest.split(".")]
            if any(not p for p in parts):
                raise ValueError(f"bad option name {dest!r}")
            node = root
            for i, part in enumerate(parts[:-1]):
                child = node.setdefault(part, {})
                if not isinstance(child, dict):
                    raise ValueError(f"option {dest!r} conflicts with {'.'.join(parts[: i + 1])!r}")
                node = child
            leaf = parts[-1]
            if leaf in node:
                raise ValueError(f"option {dest!r} conflicts with another option of the same name")
            node[leaf] = value
        return cls(root)

    # access --------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        # only called when normal lookup fails
        if name.startswith("__"):
            raise AttributeError(name)
        known = ", ".join(sorted(self.__dict__)) or "none"
        raise AttributeError(f"config has no {name!r} (known: {known})")

    def __setattr__(self, name: str, value: Any) -> None:
        _check_key(name)
        if isinstance(value, Mapping) and not isinstance(value, Config):
            value = Config(value)
        object.__setattr__(self, name, value)

    def __getitem__(self, key: str) -> Any:
        try:
            return self.__dict__[key]
        except KeyError:
            raise KeyError(key) from None

    def __contains__(self, key: object) -> bool:
        return key in self.__dict__

    def __iter__(self) -> Iterator[str]:
        return iter(self.__dict__)

    def __len__(self) -> int:
        return len(self.__dict__)

    def get(self, dotted: str, default: Any = None) -> Any:
        """``cfg.get("wallet.name")``: the value at a dotted path, or ``default``."""
        node: Any = self
        for part in dotted.split("."):
            if not isinstance(node, Config) or part not in node.__dict__:
                return default
            node = node.__dict__[part]
        return node

    def to_dict(self) -> dict[str, Any]:
        return {k: (v.to_dict() if isinstance(v, Config) else v) for k, v in self.__dict__.items()}

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Config):
            return self.to_dict() == other.to_dict()
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items())
        return f"Config({inner})"

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not key:
        raise ValueError(f"bad config key {key!r}")
    if key in _RESERVED or key.startswith("__"):
        raise ValueError(f"config key {key!r} is reserved")


# --------------------------------------------------------------------------- helpers


def endpoint_of(cfg: Config) -> str:
    """The chain to connect to: ``--subtensor.chain_endpoint`` when set, else ``--subtensor.network``
    (a network name the SDK resolves, or an endpoint URL)."""
    sub = cfg.get("subtensor")
    if not isinstance(sub, Config):
        raise ValueError("config has no subtensor flags (parser built with chain=False)")
    return sub.get("chain_endpoint") or sub.get("network") or DEFAULT_NETWORK
