"""The one place that builds a ``bittensor.Client`` from a config.

``sim://PATH`` opens the embedded local chain (``utils.localnet``) through the
SDK's ``substrate=`` seam; anything else (``finney``, ``test``, ``local``,
``ws://…``/``wss://…``) goes to the SDK's own RPC backend. Neurons call
:func:`connect` and never learn which chain they talk to.
"""

from __future__ import annotations

import asyncio

import bittensor as bt

from template.config.cli import Config, endpoint_of

SIM_SCHEME = "sim://"


def client_for(endpoint: str) -> bt.Client:
    """An unconnected client for a network name or endpoint URL."""
    if endpoint.startswith(SIM_SCHEME):
        from utils.localnet import open_substrate  # the only import of the embedded chain

        path = endpoint[len(SIM_SCHEME) :]
        if not path:
            raise ValueError("sim:// endpoint needs a localnet directory, e.g. sim://./localnet")
        # "local" only labels explorer links; the substrate decides where reads go.
        return bt.Client("local", substrate=open_substrate(path))
    return bt.Client(endpoint)


def client_from_config(cfg: Config) -> bt.Client:
    return client_for(endpoint_of(cfg))


async def connect(cfg: Config) -> bt.Client:
    """A connected client for the config's chain (close it, or use ``async with``)."""
    return await client_from_config(cfg).connect()


def orchestrator_hotkey(cfg) -> str:
    """``--orchestrator-hotkey``, else the subnet owner's hotkey from the metagraph (the hotkey its
    orchestrator signs with); exits with one line when the subnet does not exist."""
    if cfg.orchestrator_hotkey:
        return cfg.orchestrator_hotkey

    async def owner() -> str:
        async with client_from_config(cfg) as client:
            graph = await client.subnets.metagraph(cfg.netuid)
            if graph is None:
                raise SystemExit(f"error: subnet {cfg.netuid} does not exist")
            return graph.owner_hotkey

    return asyncio.run(owner())
