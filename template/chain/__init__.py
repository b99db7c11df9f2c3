"""The chain: the one place that builds a ``bittensor.Client`` (``client``: a real node, or the embedded
local chain through the SDK's ``substrate=`` seam) and the one metagraph reader (``metagraph``).

The only package that imports ``utils.localnet``. May import: ``template.config``.
"""
