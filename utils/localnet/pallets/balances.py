"""The Balances pallet: TAO transfers between accounts.

Free balance itself (``System.Account``) is read and written through
:class:`~.base.ChainCore`, because registration and staking move it too. There
are no transaction fees and no existential-deposit reaping on the embedded
chain.
"""

from __future__ import annotations

from .base import ChainCore, DispatchError, Origin, make_event


class Balances(ChainCore):
    """``transfer_keep_alive`` / ``transfer_allow_death``."""

    def transfer(self, origin: Origin, params: dict, block: int) -> list[dict]:
        sender = self._signed(origin)
        dest, value = str(params["dest"]), int(params["value"])
        if value < 0 or self.free(sender) < value:
            raise DispatchError("InsufficientBalance", "Balance too low to send value.")
        self.set_free(sender, self.free(sender) - value, block)
        self.set_free(dest, self.free(dest) + value, block)
        return [make_event("Balances", "Transfer", {"from": sender, "to": dest, "amount": value})]
