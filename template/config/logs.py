"""Logging for every process: rich on stderr, plus a log file."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from template.config.cli import Config

_HANDLER_TAG = "_tensorswarm_handler"
_NOISY_LOGGERS = ("websockets", "httpx", "httpcore", "urllib3", "asyncio", "hpack", "filelock")


def setup_logging(cfg: Config | None, logfile: str | os.PathLike[str] | None = None) -> logging.Logger:
    """Configure stdlib logging: a rich console handler on stderr, plus ``logfile`` if given.

    Level INFO by default, DEBUG with ``--logging.debug``; ``--logging.trace`` is DEBUG and also
    the ``bittensor`` SDK's logs at DEBUG (otherwise the SDK logs WARNING and up). Calling it again
    replaces the handlers it installed before (handlers installed by others are left alone).
    Returns the ``tensorswarm`` logger.
    """
    from rich.console import Console
    from rich.logging import RichHandler

    debug = bool(cfg.get("logging.debug", False)) if cfg is not None else False
    trace = bool(cfg.get("logging.trace", False)) if cfg is not None else False
    level = logging.DEBUG if (debug or trace) else logging.INFO

    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, _HANDLER_TAG, False):
            root.removeHandler(h)
            h.close()

    interactive = sys.stderr.isatty()
    console = Console(stderr=True, width=None if interactive else 200, soft_wrap=not interactive)
    rich_handler = RichHandler(
        console=console,
        level=level,
        show_path=debug or trace,
        rich_tracebacks=True,
        markup=False,
        log_time_format="[%X]",
    )
    rich_handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    setattr(rich_handler, _HANDLER_TAG, True)
    root.addHandler(rich_handler)

    if logfile is not None:
        path = Path(logfile).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(path, encoding="utf-8")
        file_handler.setLevel(level)
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(process)d %(name)s: %(message)s"))
        setattr(file_handler, _HANDLER_TAG, True)
        root.addHandler(file_handler)

    root.setLevel(level)
    logging.getLogger("bittensor").setLevel(logging.DEBUG if trace else logging.WARNING)
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if trace else logging.WARNING)
    logging.captureWarnings(True)
    return logging.getLogger("tensorswarm")
