"""The embedded chain's runtime: pallets, the block clock, epochs and emission.

This mirrors the parts of subtensor a subnet touches — balances, subnet
creation, burned registration with pruning, serving, commitments, weights with
the chain's checks, staking, owner/root hyperparameters, Yuma every tempo and
alpha emission credited as stake — over the versioned storage in
:mod:`utils.localnet.store`. Storage item names and value shapes follow the
chain, because the real bittensor SDK reads them directly.

Known simplifications (documented in the README): no transaction fees, alpha
priced 1:1 against TAO (no AMM), no root/TAO emission, no commit-reveal (its
reveals need drand), no liquid alpha, no dynamic burn or PoW.
"""

from __future__ import annotations

import hashlib
import ipaddress
import time
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from . import yuma
from .store import LocalnetError, Store

RAO = 10**9
U16_MAX = 65535
GLOBAL_MAX_SUBNET_COUNT = 4096
SUBTENSOR = "SubtensorModule"
# The SDK's ML-KEM encryptor accepts an all-zero key; the embedded block author
# matches the shielded inner extrinsic by signer and nonce instead of decrypting.
MEV_KEY = bytes(1184)
MIN_STAKE_RAO = 2_000_000  # 0.002 TAO, the chain's minimum stake
# A long-idle chain catches up at most this many epochs per subnet.
MAX_CATCHUP_EPOCHS = 200

# Per-subnet defaults (upstream runtime values; tempo and a few limits are the
# fast-runtime ones the README documents).
SUBNET_DEFAULTS: dict[str, Any] = {
    "Tempo": 10,
    "ImmunityPeriod": 5000,
    "MaxAllowedUids": 256,
    "MaxAllowedValidators": 64,
    "MinAllowedWeights": 1,
    "MaxWeightsLimit": U16_MAX,
    "WeightsSetRateLimit": 100,
    "WeightsVersionKey": 0,
    "ServingRateLimit": 50,
    "Kappa": 32767,
    "BondsMovingAverage": 900_000,
    "BondsPenalty": U16_MAX,
    "ActivityCutoff": 5000,
    "Burn": RAO,
    "MinBurn": 500_000,
    "MaxBurn": 100 * RAO,
    "CommitRevealWeightsEnabled": False,
    "RevealPeriodEpochs": 1,
    "Yuma3On": True,
    "LiquidAlphaOn": False,
    "AlphaValues": [45875, 58982],
    "NetworkRegistrationAllowed": True,
    "NetworkPowRegistrationAllowed": False,
    "MaxRegistrationsPerBlock": 16,
    "SubnetEpochConsensus": "Yuma",
    "CollateralLockShare": 0,
    "TransferToggle": True,
    "BondsResetOn": False,
    "OwnerCutEnabled": True,
    "SubtokenEnabled": False,
}
# Per-uid vectors stored per netuid, as the chain does (u16 scores, rao emission).
VECTORS = (
    "Active",
    "Rank",
    "Trust",
    "Consensus",
    "Incentive",
    "Dividends",
    "Emission",
    "ValidatorTrust",
    "ValidatorPermit",
    "PruningScores",
    "LastUpdate",
)
VECTOR_ZERO: dict[str, Any] = {"Active": True, "ValidatorPermit": False}

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
        "commit-reveal needs drand beacons fetched over HTTPS; the embedded chain runs "
        "offline with commit-reveal off",
    ),
    "LiquidAlphaOn": (True, "liquid alpha is not implemented by the embedded chain"),
    "SubnetEpochConsensus": ("Null", "Null consensus is not implemented by the embedded chain"),
}


class DispatchError(Exception):
    """A call the chain rejected: ``name`` is the upstream error variant."""

    def __init__(self, name: str, docs: str):
        super().__init__(f"{name}: {docs}")
        self.name = name
        self.docs = docs


class PoolError(Exception):
    """Rejected before inclusion (bad nonce, bad signature): nonce not consumed."""


@dataclass(frozen=True)
class Origin:
    kind: str  # "signed" | "root"
    who: Optional[str] = None


def block_hash_for(chain_id: str, number: int) -> str:
    """Deterministic block hash that also encodes the number (decoded back by
    :func:`block_number_of`)."""
    digest = hashlib.blake2b(f"{chain_id}:{number}".encode(), digest_size=24).hexdigest()
    return "0x" + f"{number:016x}" + digest


def ip_is_valid(ip_type: int, ip: int) -> bool:
    """Upstream `is_valid_ip_address` (allow_zero = false)."""
    if ip_type == 4:
        if ip == 0 or ip >= 0xFFFFFFFF or ip == 0x7F000001:
            return False
        return True
    if ip_type == 6:
        if ip == 0 or ip >= (1 << 128) - 1 or ip == 1:
            return False
        return True
    return False


class Chain:
    """State transitions over a :class:`Store`. Every public entry point first
    runs the epochs that the clock has reached (:meth:`advance`)."""

    def __init__(self, store: Store):
        self.store = store
        self.chain_id = store.get_meta("chain_id")
        self.genesis_time = float(store.get_meta("genesis_time"))
        self.block_time = float(store.get_meta("block_time"))

    # -- creation ----------------------------------------------------------

    @classmethod
    def create(
        cls,
        db_path,
        *,
        block_time: float = 0.25,
        balances: dict[str, int],
        sudo: str,
        alpha_per_block: int = RAO,
        network_lock_cost: int = 100 * RAO,
    ) -> "Chain":
        chain_id = hashlib.blake2b(f"{db_path}:{time.time_ns()}".encode(), digest_size=8).hexdigest()
        store = Store.create(
            db_path,
            {
                "chain_id": chain_id,
                "genesis_time": time.time(),
                "block_time": block_time,
                "clock_offset": 0,
                "alpha_per_block": alpha_per_block,
                "network_lock_cost": network_lock_cost,
                "processed_to": 0,
            },
        )
        with store.write():
            store.put("Sudo", "Key", [], sudo, 0)
            store.put(SUBTENSOR, "TotalNetworks", [], 0, 0)
            store.put(SUBTENSOR, "StakeThreshold", [], 0, 0)
            store.put("Commitments", "RateLimit", [], 10, 0)
            for account, free in balances.items():
                store.put("System", "Account", [account], _account(0, free), 0)
        return cls(store)

    # -- clock ---------------------------------------------------------------

    def head(self) -> int:
        offset = int(self.store.get_meta("clock_offset", 0))
        return int((time.time() - self.genesis_time) / self.block_time) + offset

    def skip_blocks(self, n: int) -> int:
        """Jump the clock forward ``n`` blocks (a dev tool, like anvil's
        ``evm_mine``): every process sharing the file sees the jump."""
        if n < 0:
            raise ValueError("can only skip forward")
        with self.store.write():
            self.store.set_meta("clock_offset", int(self.store.get_meta("clock_offset", 0)) + n)
        return self.head()

    def block_hash(self, number: int) -> str:
        return block_hash_for(self.chain_id, number)

    def block_number_of(self, block_hash: str) -> int:
        text = str(block_hash).removeprefix("0x")
        try:
            number = int(text[:16], 16)
        except ValueError:
            raise LocalnetError(f"malformed block hash {block_hash!r}") from None
        if self.block_hash(number) != "0x" + text:
            raise LocalnetError(f"unknown block hash {block_hash}")
        return number

    def timestamp_ms(self, block: int) -> int:
        offset = int(self.store.get_meta("clock_offset", 0))
        return int((self.genesis_time + (block - offset) * self.block_time) * 1000)

    # -- storage helpers -------------------------------------------------------

    def get(self, item: str, params: list, block: Optional[int] = None, module: str = SUBTENSOR):
        value = self.store.get(module, item, params, block)
        if value is None and module == SUBTENSOR and item in SUBNET_DEFAULTS and len(params) == 1:
            if self.store.has(SUBTENSOR, "NetworksAdded", params, block):
                return SUBNET_DEFAULTS[item]
        return value

    def put(self, item: str, params: list, value: Any, block: int, module: str = SUBTENSOR):
        self.store.put(module, item, params, value, block)

    def vector(self, item: str, netuid: int, block: Optional[int] = None) -> list:
        index = [self._vector_key(item, netuid)]
        return list(self.store.get(SUBTENSOR, item, index, block) or [])

    def set_vector(self, item: str, netuid: int, values: list, block: int) -> None:
        self.store.put(SUBTENSOR, item, [self._vector_key(item, netuid)], list(values), block)

    @staticmethod
    def _vector_key(item: str, netuid: int) -> int:
        # Incentive and LastUpdate are per mechanism (index = mechid*4096+netuid);
        # mechanism 0 makes that the netuid itself.
        return netuid

    def subnets(self, block: Optional[int] = None) -> list[int]:
        return [int(k[0]) for k, v in self.store.scan(SUBTENSOR, "NetworksAdded", [], block) if v]

    def subnet_exists(self, netuid: int, block: Optional[int] = None) -> bool:
        return bool(self.store.get(SUBTENSOR, "NetworksAdded", [netuid], block))

    def account(self, who: str, block: Optional[int] = None) -> dict:
        return self.store.get("System", "Account", [who], block) or _account(0, 0)

    def free(self, who: str) -> int:
        return int(self.account(who)["data"]["free"])

    def set_free(self, who: str, free: int, block: int) -> None:
        acct = self.account(who)
        acct["data"]["free"] = int(free)
        self.put("Account", [who], acct, block, module="System")

    def uid_of(self, netuid: int, hotkey: str, block: Optional[int] = None) -> Optional[int]:
        uid = self.store.get(SUBTENSOR, "Uids", [netuid, hotkey], block)
        return None if uid is None else int(uid)

    def hotkeys(self, netuid: int, block: Optional[int] = None) -> list[str]:
        n = int(self.get("SubnetworkN", [netuid], block) or 0)
        keys = dict((int(k[1]), v) for k, v in self.store.scan(SUBTENSOR, "Keys", [netuid], block))
        return [keys.get(uid, "") for uid in range(n)]

    def stake_of(self, hotkey: str, netuid: int, block: Optional[int] = None) -> int:
        return int(self.store.get(SUBTENSOR, "TotalHotkeyAlpha", [hotkey, netuid], block) or 0)

    def add_alpha(self, hotkey: str, coldkey: str, netuid: int, amount: int, block: int) -> None:
        held = int(self.store.get(SUBTENSOR, "Alpha", [hotkey, coldkey, netuid], None) or 0)
        self.put("Alpha", [hotkey, coldkey, netuid], held + amount, block)
        self.put("TotalHotkeyAlpha", [hotkey, netuid], self.stake_of(hotkey, netuid) + amount, block)

    # -- epochs and emission -----------------------------------------------------

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
        permits = np.array(_pad(self.vector("ValidatorPermit", netuid), n, False), dtype=bool)
        result = yuma.epoch(
            yuma.EpochInputs(
                stake=stake,
                weights=weights,
                last_update=np.array(_pad(self.vector("LastUpdate", netuid), n, 0), dtype=np.int64),
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

    # -- extrinsics -----------------------------------------------------------------

    def apply(self, signer: str, nonce: Optional[int], call: dict) -> dict:
        """Include a signed extrinsic in the current block. Returns a receipt
        dict; raises :class:`PoolError` for pool-level rejections."""
        head = self.advance()
        with self.store.write():
            head = self.head()
            acct = self.account(signer)
            expected = int(acct["nonce"])
            if nonce is not None and nonce != expected:
                if nonce < expected:
                    raise PoolError("Transaction is outdated (stale nonce)")
                raise PoolError(f"Transaction has a future nonce {nonce} (next is {expected})")
            acct["nonce"] = expected + 1
            self.put("Account", [signer], acct, head, module="System")
            idx = self._next_index(head)
            events: list[dict] = []
            error: Optional[DispatchError] = None
            try:
                with self.store.savepoint():
                    events = self.dispatch(Origin("signed", signer), call, head) or []
            except DispatchError as failure:
                error = failure
            ext_hash = call.get("_hash") or _hash_call(signer, expected, call)
            self._record(head, idx, ext_hash, signer, expected, call, error, events)
            # The block author decrypts a MEV-shield carrier and includes the inner
            # extrinsic right after it (signed by the same account at nonce + 1).
            inner_receipt = None
            if error is None and (call["module"], call["function"]) == ("MevShield", "submit_encrypted"):
                inner_receipt = self._include_shielded(signer, expected + 1, head)
        return {
            "block": head,
            "index": idx,
            "hash": ext_hash,
            "success": error is None,
            "error": None if error is None else {"name": error.name, "docs": error.docs},
            "events": _with_index(events, idx),
            "inner": inner_receipt,
        }

    def _next_index(self, block: int) -> int:
        row = self.store.conn.execute(
            "SELECT COALESCE(MAX(idx) + 1, 1) FROM extrinsics WHERE block = ?", (block,)
        ).fetchone()
        return int(row[0])  # index 0 is the timestamp inherent

    def _record(self, block, idx, ext_hash, signer, nonce, call, error, events) -> None:
        from .store import encode_value

        self.store.conn.execute(
            "INSERT INTO extrinsics VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                block,
                idx,
                ext_hash,
                signer,
                nonce,
                call["module"],
                call["function"],
                encode_value(_public_params(call)),
                int(error is None),
                None if error is None else encode_value({"name": error.name, "docs": error.docs}),
                encode_value(_with_index(events, idx)),
            ),
        )

    def stash_shielded(self, ext_hash: str, signer: str, nonce: int, call: dict, period: int) -> None:
        """Remember a signed inner extrinsic until its carrier arrives."""
        from .store import encode_value

        with self.store.write():
            self.store.conn.execute(
                "INSERT OR REPLACE INTO shield_pool VALUES (?,?,?,?,?)",
                (ext_hash, signer, nonce, encode_value(call), self.head() + max(1, period)),
            )

    def _include_shielded(self, signer: str, nonce: int, head: int) -> Optional[dict]:
        import json

        row = self.store.conn.execute(
            "SELECT hash, call FROM shield_pool WHERE signer=? AND nonce=? AND expires>=?",
            (signer, nonce, head),
        ).fetchone()
        if row is None:
            return None
        self.store.conn.execute("DELETE FROM shield_pool WHERE hash=?", (row[0],))
        call = json.loads(row[1])
        call["_hash"] = row[0]
        acct = self.account(signer)
        acct["nonce"] = nonce + 1
        self.put("Account", [signer], acct, head, module="System")
        idx = self._next_index(head)
        error = None
        events: list[dict] = []
        try:
            with self.store.savepoint():
                events = self.dispatch(Origin("signed", signer), call, head) or []
        except DispatchError as failure:
            error = failure
        self._record(head, idx, row[0], signer, nonce, call, error, events)
        return {"block": head, "index": idx, "hash": row[0]}

    def find_extrinsic(self, ext_hash: str, block: int) -> Optional[dict]:
        import json

        row = self.store.conn.execute(
            "SELECT idx, success, error, events FROM extrinsics WHERE hash=? AND block=?",
            (ext_hash, block),
        ).fetchone()
        if row is None:
            return None
        return {
            "block": block,
            "index": row[0],
            "hash": ext_hash,
            "success": bool(row[1]),
            "error": json.loads(row[2]) if row[2] else None,
            "events": json.loads(row[3]),
        }

    def block_extrinsics(self, block: int) -> list[dict]:
        import json

        rows = self.store.conn.execute(
            "SELECT idx, hash, signer, module, function, params, success FROM extrinsics "
            "WHERE block=? ORDER BY idx",
            (block,),
        ).fetchall()
        out = [
            {
                "extrinsic_hash": None,
                "call": {
                    "call_module": "Timestamp",
                    "call_function": "set",
                    "call_args": [{"name": "now", "value": self.timestamp_ms(block)}],
                },
            }
        ]
        for idx, ext_hash, signer, module, function, params, success in rows:
            args = [{"name": k, "value": v} for k, v in json.loads(params).items()]
            out.append(
                {
                    "extrinsic_hash": ext_hash,
                    "address": signer,
                    "success": bool(success),
                    "call": {"call_module": module, "call_function": function, "call_args": args},
                }
            )
        return out

    def block_events(self, block: int) -> list[dict]:
        import json

        events = []
        for (text,) in self.store.conn.execute(
            "SELECT events FROM extrinsics WHERE block=? ORDER BY idx", (block,)
        ):
            events.extend(json.loads(text))
        return events

    # -- dispatch ------------------------------------------------------------------------

    def dispatch(self, origin: Origin, call: dict, block: int) -> list[dict]:
        module, function, params = call["module"], call["function"], call["params"]
        if module == "Sudo" and function == "sudo":
            if origin.kind != "root" and origin.who != self.store.get("Sudo", "Key", [], None):
                raise DispatchError("RequireSudo", "Sender must be the Sudo account.")
            inner = self.dispatch(Origin("root"), params["call"], block)
            return inner + [_event("Sudo", "Sudid", {"sudo_result": {"Ok": None}})]
        if module == "AdminUtils":
            return self._admin(origin, function, params, block)
        handler = _CALLS.get((module, function))
        if handler is None:
            raise DispatchError(
                "CallNotSupported",
                f"{module}.{function} is not implemented by the embedded local chain",
            )
        return handler(self, origin, params, block) or []

    def _signed(self, origin: Origin) -> str:
        if origin.kind != "signed" or not origin.who:
            raise DispatchError("BadOrigin", "Bad origin: a signed origin is required.")
        return origin.who

    def _require_subnet(self, netuid: int) -> None:
        if not self.subnet_exists(netuid):
            raise DispatchError("SubnetNotExists", f"The subnet {netuid} does not exist.")

    # Balances ---------------------------------------------------------------------------

    def transfer(self, origin: Origin, params: dict, block: int) -> list[dict]:
        sender = self._signed(origin)
        dest, value = str(params["dest"]), int(params["value"])
        if value < 0 or self.free(sender) < value:
            raise DispatchError("InsufficientBalance", "Balance too low to send value.")
        self.set_free(sender, self.free(sender) - value, block)
        self.set_free(dest, self.free(dest) + value, block)
        return [_event("Balances", "Transfer", {"from": sender, "to": dest, "amount": value})]

    # Subnets ----------------------------------------------------------------------------

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
            _event(SUBTENSOR, "NetworkAdded", {"netuid": netuid, "mechanism": 1}),
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
        return [_event(SUBTENSOR, "FirstEmissionBlockNumberSet", {"netuid": netuid, "block": block + 1})]

    # Registration --------------------------------------------------------------------

    def burned_register(self, origin: Origin, params: dict, block: int) -> list[dict]:
        coldkey = self._signed(origin)
        netuid, hotkey = int(params["netuid"]), str(params["hotkey"])
        self._require_subnet(netuid)
        if not self.get("NetworkRegistrationAllowed", [netuid]):
            raise DispatchError("SubNetRegistrationDisabled", "Registration is disabled on this subnet.")
        if self.uid_of(netuid, hotkey) is not None:
            raise DispatchError(
                "HotKeyAlreadyRegisteredInSubNet", "The hotkey is already registered on this subnet."
            )
        owner = self.get("Owner", [hotkey])
        if owner is not None and owner != coldkey:
            raise DispatchError("NonAssociatedColdKey", "The hotkey is owned by another coldkey.")
        this_block = int(self.get("RegistrationsThisBlock", [netuid, block]) or 0)
        if this_block >= int(self.get("MaxRegistrationsPerBlock", [netuid])):
            raise DispatchError(
                "TooManyRegistrationsThisBlock", "Too many registrations on this subnet in this block."
            )
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
        return [_event(SUBTENSOR, "NeuronRegistered", {"netuid": netuid, "uid": uid, "hotkey": hotkey})]

    def _neuron_slot(self, netuid: int, block: int) -> Optional[int]:
        """None to append; else the uid to prune (lowest emission among the
        non-immune, ties to the older registration, then the lower uid)."""
        n = int(self.get("SubnetworkN", [netuid]))
        if n < int(self.get("MaxAllowedUids", [netuid])):
            return None
        immunity = int(self.get("ImmunityPeriod", [netuid]))
        scores = _pad(self.vector("PruningScores", netuid), n, 0)
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

    # Serving ----------------------------------------------------------------------------

    def serve_axon(self, origin: Origin, params: dict, block: int) -> list[dict]:
        hotkey = self._signed(origin)
        netuid = int(params["netuid"])
        self._require_subnet(netuid)
        if self.uid_of(netuid, hotkey) is None:
            raise DispatchError(
                "HotKeyNotRegisteredInNetwork", "The hotkey is not registered on this subnet."
            )
        ip, ip_type, port = int(params["ip"]), int(params["ip_type"]), int(params["port"])
        if ip_type not in (4, 6):
            raise DispatchError("InvalidIpType", "The IP type must be 4 or 6.")
        if not ip_is_valid(ip_type, ip):
            raise DispatchError("InvalidIpAddress", "The IP address is not a valid public address.")
        if not 0 < port < 65536:
            raise DispatchError("InvalidPort", "The port must be in 1..65535.")
        previous = self.get("Axons", [netuid, hotkey])
        limit = int(self.get("ServingRateLimit", [netuid]))
        if previous and limit and block - int(previous["block"]) < limit:
            raise DispatchError("ServingRateLimitExceeded", "Serving too fast; wait for the serving rate limit.")
        axon = {
            "block": block,
            "version": int(params.get("version", 0)),
            "ip": ip,
            "port": port,
            "ip_type": ip_type,
            "protocol": int(params.get("protocol", 0)),
            "placeholder1": int(params.get("placeholder1", 0)),
            "placeholder2": int(params.get("placeholder2", 0)),
        }
        self.put("Axons", [netuid, hotkey], axon, block)
        return [_event(SUBTENSOR, "AxonServed", {"netuid": netuid, "hotkey": hotkey})]

    # Commitments --------------------------------------------------------------------------

    def set_commitment(self, origin: Origin, params: dict, block: int) -> list[dict]:
        hotkey = self._signed(origin)
        netuid = int(params["netuid"])
        if self.uid_of(netuid, hotkey) is None:
            raise DispatchError("AccountNotAllowedCommit", "Only registered hotkeys may commit.")
        fields = []
        for entry in (params.get("info") or {}).get("fields") or []:
            # A field arrives as a one-element tuple around the Data variant.
            while isinstance(entry, list) and len(entry) == 1:
                entry = entry[0]
            fields.append(_commitment_field(entry))
        if len(fields) > 3:
            raise DispatchError("TooManyFieldsInCommitmentInfo", "At most 3 fields per commitment.")
        last = self.get("LastCommitment", [netuid, hotkey], module="Commitments")
        limit = int(self.store.get("Commitments", "RateLimit", [], None) or 0)
        if last is not None and limit and block - int(last) < limit:
            raise DispatchError(
                "CommitmentSetRateLimitExceeded", "Commitments set too fast; wait for the rate limit."
            )
        record = {"deposit": 0, "block": block, "info": {"fields": fields}}
        self.put("CommitmentOf", [netuid, hotkey], record, block, module="Commitments")
        self.put("LastCommitment", [netuid, hotkey], block, block, module="Commitments")
        return [_event("Commitments", "Commitment", {"netuid": netuid, "who": hotkey})]

    # Weights --------------------------------------------------------------------------------

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
        last = _pad(self.vector("LastUpdate", netuid), uid + 1, 0)[uid]
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
        last_update = _pad(self.vector("LastUpdate", netuid), n, 0)
        last_update[uid] = block
        self.set_vector("LastUpdate", netuid, last_update, block)
        return [_event(SUBTENSOR, "WeightsSet", {"netuid": netuid, "uid": uid})]

    # Staking ----------------------------------------------------------------------------------

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
        return [_event(SUBTENSOR, "StakeAdded", {"coldkey": coldkey, "hotkey": hotkey, "netuid": netuid, "tao": amount})]

    def remove_stake(self, origin: Origin, params: dict, block: int) -> list[dict]:
        coldkey = self._signed(origin)
        hotkey, netuid, amount = str(params["hotkey"]), int(params["netuid"]), int(params["amount_unstaked"])
        held = int(self.get("Alpha", [hotkey, coldkey, netuid]) or 0)
        if amount <= 0 or held < amount:
            raise DispatchError("NotEnoughStakeToWithdraw", "Not enough stake to withdraw.")
        self.add_alpha(hotkey, coldkey, netuid, -amount, block)
        self.set_free(coldkey, self.free(coldkey) + amount, block)
        return [_event(SUBTENSOR, "StakeRemoved", {"coldkey": coldkey, "hotkey": hotkey, "netuid": netuid, "alpha": amount})]

    # MEV shield carrier: inclusion of the inner extrinsic happens in `apply`.
    def submit_encrypted(self, origin: Origin, params: dict, block: int) -> list[dict]:
        self._signed(origin)
        ciphertext = params.get("ciphertext") or ""
        if len(bytes.fromhex(str(ciphertext).removeprefix("0x"))) > 8192:
            raise DispatchError("CiphertextTooLong", "The shielded ciphertext exceeds 8192 bytes.")
        return [_event("MevShield", "EncryptedSubmitted", {"who": origin.who})]

    # Hyperparameters ------------------------------------------------------------------------

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
        return [_event("AdminUtils", "HyperparameterSet", {"netuid": netuid, "name": item, "value": value})]

    # -- metagraph -------------------------------------------------------------------------------

    def metagraph(self, netuid: int, block: int) -> Optional[dict]:
        if not self.subnet_exists(netuid, block):
            return None
        get = lambda item, default=None: (  # noqa: E731
            v if (v := self.get(item, [netuid], block)) is not None else default
        )
        hotkeys = self.hotkeys(netuid, block)
        n = len(hotkeys)
        coldkeys = [self.get("Owner", [hk], block) or "" for hk in hotkeys]
        vec = lambda item, fill=0: _pad(self.vector(item, netuid, block), n, fill)  # noqa: E731
        stakes = [self.stake_of(hk, netuid, block) for hk in hotkeys]
        axons = []
        for hk in hotkeys:
            axon = self.get("Axons", [netuid, hk], block)
            axons.append(axon or {"block": 0, "version": 0, "ip": 0, "port": 0, "ip_type": 0, "protocol": 0, "placeholder1": 0, "placeholder2": 0})
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


_CALLS = {
    ("Balances", "transfer_keep_alive"): Chain.transfer,
    ("Balances", "transfer_allow_death"): Chain.transfer,
    ("SubtensorModule", "register_network"): Chain.register_network,
    ("SubtensorModule", "start_call"): Chain.start_call,
    ("SubtensorModule", "burned_register"): Chain.burned_register,
    ("SubtensorModule", "serve_axon"): Chain.serve_axon,
    ("SubtensorModule", "set_weights"): Chain.set_weights,
    ("SubtensorModule", "set_mechanism_weights"): Chain.set_weights,
    ("SubtensorModule", "add_stake"): Chain.add_stake,
    ("SubtensorModule", "add_stake_limit"): Chain.add_stake,
    ("SubtensorModule", "remove_stake"): Chain.remove_stake,
    ("Commitments", "set_commitment"): Chain.set_commitment,
    ("MevShield", "submit_encrypted"): Chain.submit_encrypted,
}


def _account(nonce: int, free: int) -> dict:
    return {
        "nonce": nonce,
        "consumers": 0,
        "providers": 1,
        "sufficients": 0,
        "data": {"free": free, "reserved": 0, "frozen": 0, "flags": 0},
    }


def _event(module: str, event: str, attributes: Any) -> dict:
    return {"phase": "ApplyExtrinsic", "event": {"module_id": module, "event_id": event, "attributes": attributes}}


def _with_index(events: list[dict], idx: int) -> list[dict]:
    return [{**e, "extrinsic_idx": idx} for e in events]


def _pad(values: list, n: int, fill: Any) -> list:
    return list(values[:n]) + [fill] * max(0, n - len(values))


def _public_params(call: dict) -> dict:
    return {k: v for k, v in call["params"].items()}


def _hash_call(signer: str, nonce: int, call: dict) -> str:
    from .store import encode_value

    payload = encode_value([signer, nonce, call["module"], call["function"], call["params"]])
    return "0x" + hashlib.blake2b(payload.encode(), digest_size=32).hexdigest()


def _commitment_field(entry: Any) -> Any:
    """Validate one Commitments ``Data`` variant; Raw bytes stored as 0x-hex."""
    if isinstance(entry, str):
        return entry
    if not isinstance(entry, dict) or len(entry) != 1:
        raise DispatchError("InvalidCommitmentField", f"malformed commitment field {entry!r}")
    (variant, value), = entry.items()
    if variant.startswith("Raw"):
        try:
            size = int(variant[3:])
        except ValueError:
            raise DispatchError("InvalidCommitmentField", f"unknown variant {variant}") from None
        data = bytes.fromhex(value.removeprefix("0x")) if isinstance(value, str) else bytes(value)
        if len(data) != size or size > 128:
            raise DispatchError("InvalidCommitmentField", f"{variant} carries {len(data)} bytes")
        return {variant: "0x" + data.hex()}
    if variant in ("Sha256", "Keccak256", "ShaThree256", "BlakeTwo256"):
        return {variant: value if isinstance(value, str) else "0x" + bytes(value).hex()}
    raise DispatchError("InvalidCommitmentField", f"commitment variant {variant} is not supported")


def ip_to_int(ip: str) -> tuple[int, int]:
    address = ipaddress.ip_address(ip)
    return int(address), address.version
