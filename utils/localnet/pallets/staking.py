"""Staking: ``add_stake`` (and ``add_stake_limit``) and ``remove_stake``.

Alpha is priced 1:1 against TAO (the embedded chain has no AMM), so staking
moves free balance into the alpha ledger kept by :class:`~.base.ChainCore`
and back.
"""

from __future__ import annotations

from .base import RAO, SUBTENSOR, ChainCore, DispatchError, Origin, make_event

MIN_STAKE_RAO = 2_000_000  # 0.002 TAO, the chain's minimum stake


class Staking(ChainCore):
    """Stake moves between a coldkey's free balance and a hotkey's alpha."""

    def add_stake(self, origin: Origin, params: dict, block: int) -> list[dict]:
        coldkey = self._signed(origin)
        hotkey, netuid, amount = str(params["hotkey"]), int(params["netuid"]), int(params["amount_staked"])
        self._require_subnet(netuid)
        if self.get("Owner", [hotkey]) is None:
            raise DispatchError("HotKeyAccountNotExists", "The hotkey account does not exist.")
        if amount < MIN_STAKE_RAO:
            raise DispatchError("AmountTooLow", "Stake amount below the 0.002 TAO minimum.")
        if self.free(coldkey) < amount:
            raise DispatchError("NotEnoughBalanceToStake", "Not enough free balance to stake.")
        limit = params.get("limit_price")
        if limit is not None and int(limit) < RAO:
            raise DispatchError("SlippageTooHigh", "The alpha price is above the limit price.")
        self.set_free(coldkey, self.free(coldkey) - amount, block)
        # Alpha priced 1:1 against TAO: the embedded chain has no AMM.
        self.add_alpha(hotkey, coldkey, netuid, amount, block)
        return [
            make_event(SUBTENSOR, "StakeAdded", {"coldkey": coldkey, "hotkey": hotkey, "netuid": netuid, "tao": amount})
        ]

    def remove_stake(self, origin: Origin, params: dict, block: int) -> list[dict]:
        coldkey = self._signed(origin)
        hotkey, netuid, amount = str(params["hotkey"]), int(params["netuid"]), int(params["amount_unstaked"])
        held = int(self.get("Alpha", [hotkey, coldkey, netuid]) or 0)
        if amount <= 0 or held < amount:
            raise DispatchError("NotEnoughStakeToWithdraw", "Not enough stake to withdraw.")
        self.add_alpha(hotkey, coldkey, netuid, -amount, block)
        self.set_free(coldkey, self.free(coldkey) + amount, block)
        return [
            make_event(
                SUBTENSOR, "StakeRemoved", {"coldkey": coldkey, "hotkey": hotkey, "netuid": netuid, "alpha": amount}
            )
        ]
