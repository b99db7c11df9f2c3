"""Weights: ``set_weights`` (mechanism 0) with the chain's checks and rate limit.

The checks run in upstream's order so the same bad call fails with the same
error variant: registration, stake threshold, version key, validator permit
(self-weights and the owner exempt), rate limit, duplicates, uid range,
``min_allowed_weights`` and ``max_weight_limit``. Stored rows are max-upscaled
to u16, as upstream stores them.
"""

from __future__ import annotations

from .base import SUBTENSOR, U16_MAX, ChainCore, DispatchError, Origin, make_event, pad


class Weights(ChainCore):
    """``Weights`` rows and ``LastUpdate`` per netuid."""

    def set_weights(self, origin: Origin, params: dict, block: int) -> list[dict]:
        hotkey = self._signed(origin)
        netuid = int(params["netuid"])
        if int(params.get("mecid", 0) or 0) != 0:
            raise DispatchError("MechanismDoesNotExist", "Only mechanism 0 exists on the embedded chain.")
        uids = [int(u) for u in params["dests"]]
        values = [int(v) for v in params["weights"]]
        self._require_subnet(netuid)
        if len(uids) != len(values):
            raise DispatchError("WeightVecNotEqualSize", "uids and weights differ in length.")
        uid = self.uid_of(netuid, hotkey)
        if uid is None:
            raise DispatchError("HotKeyNotRegisteredInSubNet", "The hotkey is not registered on this subnet.")
        threshold = int(self.store.get(SUBTENSOR, "StakeThreshold", [], None) or 0)
        if self.stake_of(hotkey, netuid) < threshold:
            raise DispatchError("NotEnoughStakeToSetWeights", "Not enough stake to set weights.")
        if int(params.get("version_key", 0)) < int(self.get("WeightsVersionKey", [netuid])):
            raise DispatchError("IncorrectWeightVersionKey", "The weights version key is too old.")
        is_self = uids == [uid]
        is_owner = self.get("SubnetOwnerHotkey", [netuid]) == hotkey
        permits = self.vector("ValidatorPermit", netuid)
        if not is_self and not is_owner and not (uid < len(permits) and permits[uid]):
            raise DispatchError("NeuronNoValidatorPermit", "The neuron has no validator permit.")
        last = pad(self.vector("LastUpdate", netuid), uid + 1, 0)[uid]
        limit = int(self.get("WeightsSetRateLimit", [netuid]))
        if limit and int(last) > 0 and block - int(last) < limit:
            raise DispatchError("SettingWeightsTooFast", "Weights set too fast; wait for the rate limit.")
        if len(set(uids)) != len(uids):
            raise DispatchError("DuplicateUids", "Duplicate uids in the weights.")
        n = int(self.get("SubnetworkN", [netuid]))
        if any(u < 0 or u >= n for u in uids) or any(v < 0 or v > U16_MAX for v in values):
            raise DispatchError("UidVecContainInvalidOne", "A uid is not registered on this subnet.")
        min_len = min(int(self.get("MinAllowedWeights", [netuid])), n)
        if not is_self and len(uids) < min_len:
            raise DispatchError("WeightVecLengthIsLow", "Fewer weights than min_allowed_weights.")
        total = sum(values)
        limit_w = int(self.get("MaxWeightsLimit", [netuid]))
        if not is_self and total and limit_w < U16_MAX and max(values) * U16_MAX > limit_w * total:
            raise DispatchError("MaxWeightExceeded", "A weight exceeds max_weight_limit.")
        # Upstream max-upscales to u16 before storing.
        top = max(values) if values else 0
        row = [[u, int(round(v * U16_MAX / top))] for u, v in zip(uids, values) if top and v > 0]
        self.put("Weights", [netuid, uid], row or None, block)
        last_update = pad(self.vector("LastUpdate", netuid), n, 0)
        last_update[uid] = block
        self.set_vector("LastUpdate", netuid, last_update, block)
        return [make_event(SUBTENSOR, "WeightsSet", {"netuid": netuid, "uid": uid})]
