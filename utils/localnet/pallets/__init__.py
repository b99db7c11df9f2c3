"""The embedded chain's pallets, one mixin per pallet over :class:`~.base.ChainCore`.

``base`` holds the core every pallet builds on (the store, the block clock,
typed storage reads and writes, origin checks) with the chain-wide constants
and errors; ``executive`` includes extrinsics and keeps their receipts;
``balances``, ``registration``, ``serving``, ``commitments``, ``weights``,
``staking`` and ``admin`` are the extrinsics a subnet calls; ``epoch`` runs
Yuma and emission every tempo; ``metagraph`` is the ``get_metagraph`` runtime
API. :class:`utils.localnet.runtime.Chain` composes them and routes calls.
"""
