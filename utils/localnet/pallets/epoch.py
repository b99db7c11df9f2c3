"""Epochs: the tempo schedule, Yuma consensus and alpha emission.

``advance`` runs every epoch the clock has passed, in block order across
subnets, catching a long-idle chain up at most ``MAX_CATCHUP_EPOCHS`` per
subnet. ``run_epoch`` reads the subnet's stake, weights, bonds and permits,
runs :func:`utils.localnet.yuma.epoch`, credits the alpha emitted since the
last epoch as stake (owner cut first), and stores the result vectors and bonds.
"""

from __future__ import annotations

import numpy as np

from .. import yuma
from .base import SUBTENSOR, U16_MAX, ChainCore, pad

# A long-idle chain catches up at most this many epochs per subnet.
MAX_CATCHUP_EPOCHS = 200


class Epochs(ChainCore):
    """Tempo, Yuma and emission."""

    @staticmethod
    def next_epoch_after(block: int, netuid: int, tempo: int) -> int:
        """Smallest E > block with (E + netuid + 1) % (tempo + 1) == 0 — upstream
        `blocks_until_next_epoch`."""
        period = tempo + 1
        start = block + 1
        return start + (-(start + netuid + 1)) % period

    def advance(self) -> int:
        """Run every epoch the clock has passed; returns the head block."""
        head = self.head()
        processed = int(self.store.get_meta("processed_to", 0))
        if head <= processed or not self._epoch_due(processed, head):
            return head
        with self.store.write():
            processed = int(self.store.get_meta("processed_to", 0))
            head = self.head()
            due = []
            for netuid in self.subnets():
                tempo = int(self.get("Tempo", [netuid]))
                if tempo <= 0:
                    continue
                epoch = self.next_epoch_after(processed, netuid, tempo)
                blocks = []
                while epoch <= head:
                    blocks.append(epoch)
                    epoch += tempo + 1
                due.extend((e, netuid) for e in blocks[-MAX_CATCHUP_EPOCHS:])
            for block, netuid in sorted(due):
                self.run_epoch(netuid, block)
            self.store.set_meta("processed_to", head)
            self.store.prune_history(head)
        return head

    def _epoch_due(self, processed: int, head: int) -> bool:
        for netuid in self.subnets():
            tempo = int(self.get("Tempo", [netuid]))
            if tempo > 0 and self.next_epoch_after(processed, netuid, tempo) <= head:
                return True
        return False

    def run_epoch(self, netuid: int, block: int) -> None:
        n = int(self.get("SubnetworkN", [netuid]) or 0)
        last_epoch = int(self.get("LastEpochBlock", [netuid]) or 0)
        started_at = self.get("FirstEmissionBlockNumber", [netuid])
        self.put("LastEpochBlock", [netuid], block, block)
        self.put("SubnetEpochIndex", [netuid], int(self.get("SubnetEpochIndex", [netuid]) or 0) + 1, block)
        if n == 0:
            return
        hotkeys = self.hotkeys(netuid)
        stake = np.array([self.stake_of(hk, netuid) for hk in hotkeys], dtype=np.float64)
        weights = np.zeros((n, n))
        for key, row in self.store.scan(SUBTENSOR, "Weights", [netuid], None):
            i = int(key[1])
            for j, value in row:
                if i < n and int(j) < n:
                    weights[i, int(j)] = value
        bonds = np.zeros((n, n))
        for key, row in self.store.scan(SUBTENSOR, "Bonds", [netuid], None):
            i = int(key[1])
            for j, value in row:
                if i < n and int(j) < n:
                    bonds[i, int(j)] = value / U16_MAX
        owner_hotkey = self.get("SubnetOwnerHotkey", [netuid])
        owner_uid = self.uid_of(netuid, owner_hotkey) if owner_hotkey else None
        permits = np.array(pad(self.vector("ValidatorPermit", netuid), n, False), dtype=bool)
        result = yuma.epoch(
            yuma.EpochInputs(
                stake=stake,
                weights=weights,
                last_update=np.array(pad(self.vector("LastUpdate", netuid), n, 0), dtype=np.int64),
                block_at_registration=np.array(
                    [int(self.get("BlockAtRegistration", [netuid, uid]) or 0) for uid in range(n)],
                    dtype=np.int64,
                ),
                validator_permit=permits,
                bonds=bonds,
                current_block=block,
                activity_cutoff=int(self.get("ActivityCutoff", [netuid])),
                kappa=int(self.get("Kappa", [netuid])) / U16_MAX,
                bonds_moving_average=int(self.get("BondsMovingAverage", [netuid])),
                bonds_penalty=int(self.get("BondsPenalty", [netuid])) / U16_MAX,
                max_allowed_validators=int(self.get("MaxAllowedValidators", [netuid])),
                owner_uid=owner_uid,
                yuma3=bool(self.get("Yuma3On", [netuid])),
                tempo=int(self.get("Tempo", [netuid])),
                last_mechanism_step_block=last_epoch,
                stake_threshold=float(self.store.get(SUBTENSOR, "StakeThreshold", [], None) or 0),
            )
        )
        # Emission accrued since the last epoch (only once the subnet started).
        emission = np.zeros(n, dtype=np.int64)
        if started_at is not None and block >= int(started_at):
            accrued_from = max(last_epoch, int(started_at) - 1)
            pending = int(self.store.get_meta("alpha_per_block")) * max(0, block - accrued_from)
            if self.get("OwnerCutEnabled", [netuid]) and owner_hotkey:
                owner_cut = pending * 18 // 100
                owner_cold = self.get("Owner", [owner_hotkey])
                self.add_alpha(owner_hotkey, owner_cold, netuid, owner_cut, block)
                pending -= owner_cut
            # Upstream shares: half to miners by incentive, half to validators by
            # dividends; with no weights at all, validators by active stake.
            shares = np.asarray(result.server_emission) + np.asarray(result.validator_emission)
            emission += np.floor(shares * pending).astype(np.int64)
            for uid, amount in enumerate(emission):
                if amount > 0:
                    hk = hotkeys[uid]
                    self.add_alpha(hk, self.get("Owner", [hk]), netuid, int(amount), block)
        u16 = yuma.to_u16
        self.set_vector("Active", netuid, [bool(x) for x in result.active], block)
        self.set_vector("ValidatorPermit", netuid, [bool(x) for x in result.validator_permit], block)
        for item, values in (
            ("Rank", result.rank),
            ("Trust", result.trust),
            ("Consensus", result.consensus),
            ("Incentive", result.incentive),
            ("Dividends", result.dividends),
            ("ValidatorTrust", result.validator_trust),
        ):
            self.set_vector(item, netuid, [int(x) for x in u16(np.asarray(values))], block)
        self.set_vector("Emission", netuid, [int(x) for x in emission], block)
        pruning = yuma.max_upscale_to_u16(np.asarray(result.server_emission) + np.asarray(result.validator_emission))
        self.set_vector("PruningScores", netuid, [int(x) for x in pruning], block)
        new_bonds = np.asarray(result.bonds)
        for i in range(n):
            row = [[j, int(round(min(1.0, max(0.0, v)) * U16_MAX))] for j, v in enumerate(new_bonds[i]) if v > 0]
            old = self.store.get(SUBTENSOR, "Bonds", [netuid, i], None)
            if row or old:
                self.put("Bonds", [netuid, i], row or None, block)
