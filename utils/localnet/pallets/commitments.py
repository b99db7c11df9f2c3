"""The Commitments pallet: ``set_commitment`` for registered hotkeys, rate limited.

A commitment holds at most three ``Data`` fields; Raw bytes are stored as
0x-hex and the hash variants as given, the shapes the SDK decodes.
"""

from __future__ import annotations

from typing import Any

from .base import ChainCore, DispatchError, Origin, make_event


class Commitments(ChainCore):
    """``CommitmentOf`` and ``LastCommitment`` per (netuid, hotkey)."""

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
            raise DispatchError("CommitmentSetRateLimitExceeded", "Commitments set too fast; wait for the rate limit.")
        record = {"deposit": 0, "block": block, "info": {"fields": fields}}
        self.put("CommitmentOf", [netuid, hotkey], record, block, module="Commitments")
        self.put("LastCommitment", [netuid, hotkey], block, block, module="Commitments")
        return [make_event("Commitments", "Commitment", {"netuid": netuid, "who": hotkey})]


def _commitment_field(entry: Any) -> Any:
    """Validate one Commitments ``Data`` variant; Raw bytes stored as 0x-hex."""
    if isinstance(entry, str):
        return entry
    if not isinstance(entry, dict) or len(entry) != 1:
        raise DispatchError("InvalidCommitmentField", f"malformed commitment field {entry!r}")
    ((variant, value),) = entry.items()
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
