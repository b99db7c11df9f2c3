"""The core every pallet builds on: chain-wide constants, errors, and :class:`ChainCore`.

``ChainCore`` owns the :class:`~utils.localnet.store.Store`, the block clock
(wall time since genesis plus a shared skip offset), and the typed storage
reads and writes the pallets share: subnet hyperparameters with their
defaults, the per-netuid vectors, accounts and free balance, uids and hotkeys,
and the alpha stake ledger. Storage item names and value shapes follow the
chain, because the real bittensor SDK reads them directly.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any, Optional, TypeVar

from ..store import LocalnetError, Store

RAO = 10**9
U16_MAX = 65535
GLOBAL_MAX_SUBNET_COUNT = 4096
SUBTENSOR = "SubtensorModule"

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


def new_account(nonce: int, free: int) -> dict:
    return {
        "nonce": nonce,
        "consumers": 0,
        "providers": 1,
        "sufficients": 0,
        "data": {"free": free, "reserved": 0, "frozen": 0, "flags": 0},
    }


def make_event(module: str, event: str, attributes: Any) -> dict:
    return {"phase": "ApplyExtrinsic", "event": {"module_id": module, "event_id": event, "attributes": attributes}}


def with_index(events: list[dict], idx: int) -> list[dict]:
    return [{**e, "extrinsic_idx": idx} for e in events]


def pad(values: list, n: int, fill: Any) -> list:
    return list(values[:n]) + [fill] * max(0, n - len(values))


_C = TypeVar("_C", bound="ChainCore")


class ChainCore:
    """The store, the block clock and typed storage access. Every public entry
    point of the composed chain first runs the epochs that the clock has
    reached (``advance``, in :mod:`.epoch`)."""

    def __init__(self, store: Store):
        self.store = store
        self.chain_id = store.get_meta("chain_id")
        self.genesis_time = float(store.get_meta("genesis_time"))
        self.block_time = float(store.get_meta("block_time"))

    # -- creation ----------------------------------------------------------

    @classmethod
    def create(
        cls: type[_C],
        db_path,
        *,
        block_time: float = 0.25,
        balances: dict[str, int],
        sudo: str,
        alpha_per_block: int = RAO,
        network_lock_cost: int = 100 * RAO,
    ) -> _C:
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
                store.put("System", "Account", [account], new_account(0, free), 0)
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
        # A per-subnet hyperparameter never set reads as its default, but only on a subnet that exists.
        if (
            value is None
            and module == SUBTENSOR
            and item in SUBNET_DEFAULTS
            and len(params) == 1
            and self.store.has(SUBTENSOR, "NetworksAdded", params, block)
        ):
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
        return self.store.get("System", "Account", [who], block) or new_account(0, 0)

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

    # -- origin checks ---------------------------------------------------------

    def _signed(self, origin: Origin) -> str:
        if origin.kind != "signed" or not origin.who:
            raise DispatchError("BadOrigin", "Bad origin: a signed origin is required.")
        return origin.who

    def _require_subnet(self, netuid: int) -> None:
        if not self.subnet_exists(netuid):
            raise DispatchError("SubnetNotExists", f"The subnet {netuid} does not exist.")
