"""Development utilities, e.g. ``utils.localnet``, the embedded local chain."""
