"""Block building: inclusion of signed extrinsics, their receipts, and block bodies.

``apply`` checks the nonce, dispatches the call inside a savepoint (a failed
call keeps its nonce bump and receipt but none of its writes) and records the
receipt in the ``extrinsics`` table, from which ``find_extrinsic``,
``block_extrinsics`` and ``block_events`` read. The MEV-shield pallet lives
here too: its carrier call is a no-op check, and the block author includes the
stashed inner extrinsic right after the carrier.
"""

from __future__ import annotations

import hashlib
import json
from typing import Optional

from ..store import encode_value
from .base import ChainCore, DispatchError, Origin, PoolError, make_event, with_index

# The SDK's ML-KEM encryptor accepts an all-zero key; the embedded block author
# matches the shielded inner extrinsic by signer and nonce instead of decrypting.
MEV_KEY = bytes(1184)


class Executive(ChainCore):
    """Extrinsic inclusion and receipts. Composed into ``runtime.Chain``, which
    supplies the call router (``dispatch``); ``advance`` comes from
    :class:`~.epoch.Epochs`."""

    def dispatch(self, origin: Origin, call: dict, block: int) -> list[dict]:
        raise NotImplementedError  # provided by utils.localnet.runtime.Chain, which knows every pallet

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
            "events": with_index(events, idx),
            "inner": inner_receipt,
        }

    def _next_index(self, block: int) -> int:
        row = self.store.conn.execute(
            "SELECT COALESCE(MAX(idx) + 1, 1) FROM extrinsics WHERE block = ?", (block,)
        ).fetchone()
        return int(row[0])  # index 0 is the timestamp inherent

    def _record(self, block, idx, ext_hash, signer, nonce, call, error, events) -> None:
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
                encode_value(with_index(events, idx)),
            ),
        )

    def stash_shielded(self, ext_hash: str, signer: str, nonce: int, call: dict, period: int) -> None:
        """Remember a signed inner extrinsic until its carrier arrives."""
        with self.store.write():
            self.store.conn.execute(
                "INSERT OR REPLACE INTO shield_pool VALUES (?,?,?,?,?)",
                (ext_hash, signer, nonce, encode_value(call), self.head() + max(1, period)),
            )

    def _include_shielded(self, signer: str, nonce: int, head: int) -> Optional[dict]:
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
        rows = self.store.conn.execute(
            "SELECT idx, hash, signer, module, function, params, success FROM extrinsics WHERE block=? ORDER BY idx",
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
        events = []
        for (text,) in self.store.conn.execute("SELECT events FROM extrinsics WHERE block=? ORDER BY idx", (block,)):
            events.extend(json.loads(text))
        return events

    # MEV shield carrier: inclusion of the inner extrinsic happens in `apply`.
    def submit_encrypted(self, origin: Origin, params: dict, block: int) -> list[dict]:
        self._signed(origin)
        ciphertext = params.get("ciphertext") or ""
        if len(bytes.fromhex(str(ciphertext).removeprefix("0x"))) > 8192:
            raise DispatchError("CiphertextTooLong", "The shielded ciphertext exceeds 8192 bytes.")
        return [make_event("MevShield", "EncryptedSubmitted", {"who": origin.who})]


def _public_params(call: dict) -> dict:
    return {k: v for k, v in call["params"].items()}


def _hash_call(signer: str, nonce: int, call: dict) -> str:
    payload = encode_value([signer, nonce, call["module"], call["function"], call["params"]])
    return "0x" + hashlib.blake2b(payload.encode(), digest_size=32).hexdigest()
