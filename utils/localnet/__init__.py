"""The embedded local subtensor chain.

A Python implementation of the ``bittensor.Substrate`` protocol over a SQLite
file, so the real SDK (``bt.Client(..., substrate=open_substrate(path))``)
runs registration, serving, commitments, weights, staking, hyperparameters,
Yuma consensus and emission without a node. Several processes share one chain
through the file. Only ``template/chain.py`` imports this package; neurons
never know which chain they talk to.

    python -m utils.localnet init --dir ./localnet --miners 3 --validators 1
    python -m utils.localnet status --dir ./localnet
"""

from __future__ import annotations

import os

from .store import LocalnetError

__all__ = ["open_substrate", "LocalnetError", "SIM_SCHEME"]

SIM_SCHEME = "sim://"


def open_substrate(path: str | os.PathLike):
    """A ``bittensor.Substrate`` for a localnet directory (or its database
    file). Raises :class:`LocalnetError` naming the path when the file is
    missing, truncated, corrupt or not a localnet database."""
    from .substrate import LocalSubstrate

    return LocalSubstrate(os.fspath(path))
