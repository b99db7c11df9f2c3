"""The ``SubnetInfoRuntimeApi.get_metagraph`` runtime API, in the SDK's decoded shape.

Fields the embedded chain has no notion of (root stake, the AMM's reserves and
prices, PoW difficulty) are reported as their neutral values.
"""

from __future__ import annotations

from typing import Optional

from .base import ChainCore, pad


class Metagraph(ChainCore):
    """One subnet's metagraph at a block."""

    def metagraph(self, netuid: int, block: int) -> Optional[dict]:
        if not self.subnet_exists(netuid, block):
            return None
        get = lambda item, default=None: v if (v := self.get(item, [netuid], block)) is not None else default
        hotkeys = self.hotkeys(netuid, block)
        n = len(hotkeys)
        coldkeys = [self.get("Owner", [hk], block) or "" for hk in hotkeys]
        vec = lambda item, fill=0: pad(self.vector(item, netuid, block), n, fill)
        stakes = [self.stake_of(hk, netuid, block) for hk in hotkeys]
        axons = []
        for hk in hotkeys:
            axon = self.get("Axons", [netuid, hk], block)
            axons.append(
                axon
                or {
                    "block": 0,
                    "version": 0,
                    "ip": 0,
                    "port": 0,
                    "ip_type": 0,
                    "protocol": 0,
                    "placeholder1": 0,
                    "placeholder2": 0,
                }
            )
        last_epoch = int(get("LastEpochBlock", 0))
        tao_locked = int(get("SubnetLocked", 0))
        return {
            "netuid": netuid,
            "name": get("SubnetName", []),
            "symbol": get("TokenSymbol", []),
            "identity": None,
            "network_registered_at": int(get("NetworkRegisteredAt", 0)),
            "owner_hotkey": get("SubnetOwnerHotkey"),
            "owner_coldkey": get("SubnetOwner"),
            "block": block,
            "tempo": int(get("Tempo")),
            "last_step": last_epoch,
            "blocks_since_last_step": block - last_epoch,
            "subnet_emission": 0,
            "alpha_in": tao_locked,
            "alpha_out": sum(stakes),
            "tao_in": tao_locked,
            "alpha_in_emission": 0,
            "alpha_out_emission": int(self.store.get_meta("alpha_per_block")),
            "tao_in_emission": 0,
            "pending_alpha_emission": 0,
            "pending_root_emission": 0,
            "subnet_volume": 0,
            "moving_price": {"bits": 2**32},
            "rho": int(get("Rho", 10)),
            "kappa": int(get("Kappa")),
            "min_allowed_weights": int(get("MinAllowedWeights")),
            "max_weights_limit": int(get("MaxWeightsLimit")),
            "weights_version": int(get("WeightsVersionKey")),
            "weights_rate_limit": int(get("WeightsSetRateLimit")),
            "activity_cutoff": int(get("ActivityCutoff")),
            "max_validators": int(get("MaxAllowedValidators")),
            "num_uids": n,
            "max_uids": int(get("MaxAllowedUids")),
            "burn": int(get("Burn")),
            "difficulty": 0,
            "registration_allowed": bool(get("NetworkRegistrationAllowed")),
            "pow_registration_allowed": bool(get("NetworkPowRegistrationAllowed")),
            "immunity_period": int(get("ImmunityPeriod")),
            "min_difficulty": 0,
            "max_difficulty": 0,
            "min_burn": int(get("MinBurn")),
            "max_burn": int(get("MaxBurn")),
            "adjustment_alpha": 0,
            "adjustment_interval": 0,
            "target_regs_per_interval": 0,
            "max_regs_per_block": int(get("MaxRegistrationsPerBlock")),
            "serving_rate_limit": int(get("ServingRateLimit")),
            "commit_reveal_weights_enabled": bool(get("CommitRevealWeightsEnabled")),
            "commit_reveal_period": int(get("RevealPeriodEpochs")),
            "liquid_alpha_enabled": bool(get("LiquidAlphaOn")),
            "alpha_high": int(get("AlphaValues")[1]),
            "alpha_low": int(get("AlphaValues")[0]),
            "bonds_moving_avg": int(get("BondsMovingAverage")),
            "hotkeys": hotkeys,
            "coldkeys": coldkeys,
            "identities": [None] * n,
            "axons": axons,
            "active": [bool(x) for x in vec("Active", True)],
            "validator_permit": [bool(x) for x in vec("ValidatorPermit", False)],
            "pruning_score": vec("PruningScores"),
            "last_update": vec("LastUpdate"),
            "emission": vec("Emission"),
            "dividends": vec("Dividends"),
            "incentives": vec("Incentive"),
            "consensus": vec("Consensus"),
            "trust": vec("Trust"),
            "rank": vec("Rank"),
            "block_at_registration": [
                int(self.get("BlockAtRegistration", [netuid, uid], block) or 0) for uid in range(n)
            ],
            "alpha_stake": stakes,
            "tao_stake": [0] * n,
            "total_stake": stakes,
            "tao_dividends_per_hotkey": [[hk, 0] for hk in hotkeys],
            "alpha_dividends_per_hotkey": [[hk, 0] for hk in hotkeys],
        }
