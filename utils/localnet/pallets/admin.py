"""Hyperparameters: the AdminUtils setters, by the subnet owner or by root (Sudo).

Each setter writes one per-subnet storage item. Which setters the owner may
call is the SDK's own list, so ``SetHyperparameter`` and this chain never
drift; the rest are root-only. Values the embedded chain cannot honour offline
are refused rather than silently ignored.
"""

from __future__ import annotations

from typing import Any

from .base import ChainCore, DispatchError, Origin, make_event

# AdminUtils setter -> storage item it writes. Owner-settable ones are the
# SDK's own list (so `SetHyperparameter` and this chain never drift); the rest
# are root-only (Sudo).
ADMIN_SETTERS: dict[str, str] = {
    "sudo_set_tempo": "Tempo",
    "sudo_set_immunity_period": "ImmunityPeriod",
    "sudo_set_min_allowed_weights": "MinAllowedWeights",
    "sudo_set_max_weight_limit": "MaxWeightsLimit",
    "sudo_set_weights_version_key": "WeightsVersionKey",
    "sudo_set_weights_set_rate_limit": "WeightsSetRateLimit",
    "sudo_set_activity_cutoff": "ActivityCutoff",
    "sudo_set_activity_cutoff_factor": "ActivityCutoffFactor",
    "sudo_set_min_burn": "MinBurn",
    "sudo_set_max_burn": "MaxBurn",
    "sudo_set_burn": "Burn",
    "sudo_set_bonds_moving_average": "BondsMovingAverage",
    "sudo_set_bonds_penalty": "BondsPenalty",
    "sudo_set_serving_rate_limit": "ServingRateLimit",
    "sudo_set_commit_reveal_weights_interval": "RevealPeriodEpochs",
    "sudo_set_commit_reveal_weights_enabled": "CommitRevealWeightsEnabled",
    "sudo_set_max_allowed_uids": "MaxAllowedUids",
    "sudo_set_max_allowed_validators": "MaxAllowedValidators",
    "sudo_set_kappa": "Kappa",
    "sudo_set_max_registrations_per_block": "MaxRegistrationsPerBlock",
    "sudo_set_network_registration_allowed": "NetworkRegistrationAllowed",
    "sudo_set_network_pow_registration_allowed": "NetworkPowRegistrationAllowed",
    "sudo_set_yuma3_enabled": "Yuma3On",
    "sudo_set_liquid_alpha_enabled": "LiquidAlphaOn",
    "sudo_set_bonds_reset_enabled": "BondsResetOn",
    "sudo_set_toggle_transfer": "TransferToggle",
    "sudo_set_owner_cut_enabled": "OwnerCutEnabled",
    "sudo_set_epoch_consensus": "SubnetEpochConsensus",
    "sudo_set_collateral_lock_share": "CollateralLockShare",
    "sudo_set_adjustment_alpha": "AdjustmentAlpha",
    "sudo_set_rho": "Rho",
    "sudo_set_max_difficulty": "MaxDifficulty",
    "sudo_set_burn_increase_mult": "BurnIncreaseMult",
    "sudo_set_burn_half_life": "BurnHalfLife",
    "sudo_set_alpha_sigmoid_steepness": "AlphaSigmoidSteepness",
    "sudo_set_min_childkey_take_per_subnet": "MinChildkeyTake",
    "sudo_set_owner_immune_neuron_limit": "ImmuneOwnerUidsLimit",
    "sudo_set_collateral_drain_ratio": "CollateralDrainRatio",
    "sudo_set_owner_cut_auto_lock_enabled": "OwnerCutAutoLockEnabled",
}


def _owner_setters() -> set[str]:
    from bittensor.intents.hyperparameters import OWNER_HYPERPARAMETERS

    return {method for method, _ in OWNER_HYPERPARAMETERS.values()}


OWNER_SETTERS = _owner_setters()
# Settings the embedded chain cannot honour offline; refused, not silently ignored.
UNSUPPORTED_VALUES: dict[str, tuple[Any, str]] = {
    "CommitRevealWeightsEnabled": (
        True,
        "commit-reveal needs drand beacons fetched over HTTPS; the embedded chain runs offline with commit-reveal off",
    ),
    "LiquidAlphaOn": (True, "liquid alpha is not implemented by the embedded chain"),
    "SubnetEpochConsensus": ("Null", "Null consensus is not implemented by the embedded chain"),
}


class Admin(ChainCore):
    """``AdminUtils.*`` dispatch (reached directly, or wrapped in ``Sudo.sudo``)."""

    def _admin(self, origin: Origin, function: str, params: dict, block: int) -> list[dict]:
        if function == "sudo_set_stake_threshold":
            if origin.kind != "root":
                raise DispatchError("BadOrigin", "Bad origin: root only.")
            self.put("StakeThreshold", [], int(next(iter(params.values()))), block)
            return []
        if function == "sudo_set_alpha_values":
            item, value = "AlphaValues", [int(params["alpha_low"]), int(params["alpha_high"])]
        elif function in ADMIN_SETTERS:
            item = ADMIN_SETTERS[function]
            value = next(v for k, v in params.items() if k != "netuid")
        else:
            raise DispatchError("CallNotSupported", f"AdminUtils.{function} is not implemented by the embedded chain")
        netuid = int(params["netuid"])
        self._require_subnet(netuid)
        if origin.kind != "root":
            if self.get("SubnetOwner", [netuid]) != origin.who:
                raise DispatchError("BadOrigin", "Bad origin: only the subnet owner or root may set this.")
            if function not in OWNER_SETTERS:
                raise DispatchError("BadOrigin", f"Bad origin: {function} is root-only.")
        if isinstance(value, dict) and "bits" in value:
            value = value["bits"]
        refused = UNSUPPORTED_VALUES.get(item)
        if refused is not None and value == refused[0]:
            raise DispatchError("NotSupportedOnLocalnet", refused[1])
        if item == "ActivityCutoffFactor":
            tempo = int(self.get("Tempo", [netuid]))
            self.put("ActivityCutoff", [netuid], max(1, int(value) * tempo // 1000), block)
        self.put(item, [netuid], value, block)
        return [make_event("AdminUtils", "HyperparameterSet", {"netuid": netuid, "name": item, "value": value})]
