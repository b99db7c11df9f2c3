"""Subnets and neurons: network registration, ``start_call``, burned registration.

A new subnet gets its owner hotkey as uid 0. Burned registration appends a
neuron while the subnet has room; once full it replaces the non-immune neuron
with the lowest pruning score (ties to the older registration, then the lower
uid), clearing that uid's weights, bonds and vectors as upstream does.
"""

from __future__ import annotations

from typing import Optional

from .base import (
    GLOBAL_MAX_SUBNET_COUNT,
    SUBTENSOR,
    VECTOR_ZERO,
    VECTORS,
    ChainCore,
    DispatchError,
    Origin,
    make_event,
    pad,
)


class Registration(ChainCore):
    """Subnet creation and start, neuron registration and pruning."""

    def register_network(self, origin: Origin, params: dict, block: int) -> list[dict]:
        coldkey = self._signed(origin)
        hotkey = str(params.get("hotkey") or coldkey)
        cost = int(self.store.get_meta("network_lock_cost"))
        if self.free(coldkey) < cost:
            raise DispatchError("NotEnoughBalanceToStake", "Not enough balance to lock the network cost.")
        owner = self.get("Owner", [hotkey])
        if owner is not None and owner != coldkey:
            raise DispatchError("NonAssociatedColdKey", "The hotkey is owned by another coldkey.")
        taken = set(self.subnets())
        netuid = next(i for i in range(1, GLOBAL_MAX_SUBNET_COUNT) if i not in taken)
        self.set_free(coldkey, self.free(coldkey) - cost, block)
        self.put("NetworksAdded", [netuid], True, block)
        self.put("TotalNetworks", [], len(taken) + 1, block)
        self.put("SubnetOwner", [netuid], coldkey, block)
        self.put("SubnetOwnerHotkey", [netuid], hotkey, block)
        self.put("NetworkRegisteredAt", [netuid], block, block)
        self.put("SubnetLocked", [netuid], cost, block)
        self.put("TokenSymbol", [netuid], list(f"SN{netuid}".encode()), block)
        self.put("SubnetName", [netuid], list(f"subnet-{netuid}".encode()), block)
        self.put("SubnetworkN", [netuid], 0, block)
        self.put("LastEpochBlock", [netuid], block, block)
        self.put("Owner", [hotkey], coldkey, block)
        for item in VECTORS:
            self.set_vector(item, netuid, [], block)
        # Upstream appends the owner hotkey as the subnet's first neuron (uid 0).
        self._append_neuron(netuid, hotkey, block)
        return [
            make_event(SUBTENSOR, "NetworkAdded", {"netuid": netuid, "mechanism": 1}),
        ]

    def start_call(self, origin: Origin, params: dict, block: int) -> list[dict]:
        coldkey = self._signed(origin)
        netuid = int(params["netuid"])
        self._require_subnet(netuid)
        if self.get("SubnetOwner", [netuid]) != coldkey:
            raise DispatchError("NotSubnetOwner", "The caller is not the subnet owner.")
        if self.get("FirstEmissionBlockNumber", [netuid]) is not None:
            raise DispatchError("FirstEmissionBlockNumberAlreadySet", "The subnet was already started.")
        self.put("FirstEmissionBlockNumber", [netuid], block + 1, block)
        self.put("SubtokenEnabled", [netuid], True, block)
        return [make_event(SUBTENSOR, "FirstEmissionBlockNumberSet", {"netuid": netuid, "block": block + 1})]

    def burned_register(self, origin: Origin, params: dict, block: int) -> list[dict]:
        coldkey = self._signed(origin)
        netuid, hotkey = int(params["netuid"]), str(params["hotkey"])
        self._require_subnet(netuid)
        if not self.get("NetworkRegistrationAllowed", [netuid]):
            raise DispatchError("SubNetRegistrationDisabled", "Registration is disabled on this subnet.")
        if self.uid_of(netuid, hotkey) is not None:
            raise DispatchError("HotKeyAlreadyRegisteredInSubNet", "The hotkey is already registered on this subnet.")
        owner = self.get("Owner", [hotkey])
        if owner is not None and owner != coldkey:
            raise DispatchError("NonAssociatedColdKey", "The hotkey is owned by another coldkey.")
        this_block = int(self.get("RegistrationsThisBlock", [netuid, block]) or 0)
        if this_block >= int(self.get("MaxRegistrationsPerBlock", [netuid])):
            raise DispatchError("TooManyRegistrationsThisBlock", "Too many registrations on this subnet in this block.")
        burn = int(self.get("Burn", [netuid]))
        if self.free(coldkey) < burn:
            raise DispatchError("NotEnoughBalanceToStake", "Not enough balance to pay the registration burn.")
        uid = self._neuron_slot(netuid, block)
        self.set_free(coldkey, self.free(coldkey) - burn, block)
        self.put("RegistrationsThisBlock", [netuid, block], this_block + 1, block)
        self.put("Owner", [hotkey], coldkey, block)
        if uid is None:
            uid = self._append_neuron(netuid, hotkey, block)
        else:
            self._replace_neuron(netuid, uid, hotkey, block)
        return [make_event(SUBTENSOR, "NeuronRegistered", {"netuid": netuid, "uid": uid, "hotkey": hotkey})]

    def _neuron_slot(self, netuid: int, block: int) -> Optional[int]:
        """None to append; else the uid to prune (lowest emission among the
        non-immune, ties to the older registration, then the lower uid)."""
        n = int(self.get("SubnetworkN", [netuid]))
        if n < int(self.get("MaxAllowedUids", [netuid])):
            return None
        immunity = int(self.get("ImmunityPeriod", [netuid]))
        scores = pad(self.vector("PruningScores", netuid), n, 0)
        owner_hotkey = self.get("SubnetOwnerHotkey", [netuid])
        candidates = []
        for uid, hk in enumerate(self.hotkeys(netuid)):
            registered = int(self.get("BlockAtRegistration", [netuid, uid]) or 0)
            if hk == owner_hotkey or block - registered < immunity:
                continue
            candidates.append((int(scores[uid]), registered, uid))
        if not candidates:
            raise DispatchError("NoNeuronIdAvailable", "Every uid is immune; none can be pruned.")
        return min(candidates)[2]

    def _append_neuron(self, netuid: int, hotkey: str, block: int) -> int:
        uid = int(self.get("SubnetworkN", [netuid]) or 0)
        self.put("SubnetworkN", [netuid], uid + 1, block)
        for item in VECTORS:
            values = self.vector(item, netuid)
            values.append(block if item == "LastUpdate" else VECTOR_ZERO.get(item, 0))
            self.set_vector(item, netuid, values, block)
        self._bind(netuid, uid, hotkey, block)
        return uid

    def _replace_neuron(self, netuid: int, uid: int, hotkey: str, block: int) -> None:
        old = self.hotkeys(netuid)[uid]
        self.put("Uids", [netuid, old], None, block)
        self.put("Axons", [netuid, old], None, block)
        self.put("Weights", [netuid, uid], None, block)
        self.put("Bonds", [netuid, uid], None, block)
        for key, row in self.store.scan(SUBTENSOR, "Bonds", [netuid], None):
            kept = [[j, v] for j, v in row if int(j) != uid]
            if len(kept) != len(row):
                self.put("Bonds", key, kept or None, block)
        for item in VECTORS:
            values = self.vector(item, netuid)
            values[uid] = block if item == "LastUpdate" else VECTOR_ZERO.get(item, 0)
            self.set_vector(item, netuid, values, block)
        self._bind(netuid, uid, hotkey, block)

    def _bind(self, netuid: int, uid: int, hotkey: str, block: int) -> None:
        self.put("Uids", [netuid, hotkey], uid, block)
        self.put("Keys", [netuid, uid], hotkey, block)
        self.put("BlockAtRegistration", [netuid, uid], block, block)
        self.put("IsNetworkMember", [hotkey, netuid], True, block)
