"""Signed per-round receipts and the contributions they describe, kept on the miner's disk for
validators (served by the meta-miner), and the miner's progress file. The round manager signs and
stores through this module (``receipts.sign_receipt``, ``receipts.ReceiptStore``), looked up at call
time, so a wrapper installed here (tests/adversaries/adversarial_miner.py) sees every receipt."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from template import wire as p
from template.files import atomic_write
from template.wire.receipts import SignedReceipt
from template.wire.signing import sign_receipt

if TYPE_CHECKING:  # the meta-miner serves receipts without torch (its import is seconds of CPU per process)
    from template.engine.strategies import RoundResult

__all__ = ["ReceiptStore", "load_progress", "receipt_of", "sign_receipt", "write_progress"]


def receipt_of(
    result: RoundResult, a: p.Assignment, run: p.RunInfo, hotkey: str, start_state: Optional[str]
) -> p.Receipt:
    """The (unsigned) receipt of ``result``: this rank's round, from the agreed ``start_state`` its inner
    steps began at."""
    return p.Receipt(
        hotkey=hotkey,
        run_id=run.run_id,
        generation=a.generation,
        round=result.round,
        rank=a.rank,
        start_state=start_state,
        end_state=result.state_hash,
        seed=run.training.seed,
        losses=result.losses,
        contribution_sha256=result.contribution_sha256,
        contribution_norm=result.contribution_norm,
        contribution_bytes=len(result.contribution or b""),
        dropped=result.dropped,
        received_sha256=result.received,
        created_at=time.time(),
    )


class ReceiptStore:
    """``DIR/receipts/<round>.json`` and ``DIR/contributions/<round>.bin``; the
    newest ``keep`` rounds are kept. A rank stores its rounds in order, so rounds above the one it stores
    are an abandoned history (a rollback, or a new run in the same work dir): they are dropped, or they
    would outrank every new round and have it pruned as soon as it is written."""

    def __init__(self, directory: Path, keep: int = 200):
        self.receipts = Path(directory) / "receipts"
        self.contributions = Path(directory) / "contributions"
        self.receipts.mkdir(parents=True, exist_ok=True)
        self.contributions.mkdir(parents=True, exist_ok=True)
        self.keep = keep

    def put(self, signed: SignedReceipt, contribution: Optional[bytes]) -> None:
        r = signed.receipt.round
        if contribution is not None:
            atomic_write(self.contributions / f"{r:010d}.bin", contribution)
        atomic_write(self.receipts / f"{r:010d}.json", signed.model_dump_json().encode())
        stored = sorted(self.receipts.glob("*.json"))
        abandoned = [path for path in stored if int(path.stem) > r]
        kept = [path for path in stored if int(path.stem) <= r]
        for old in abandoned + kept[: -self.keep]:
            old.unlink(missing_ok=True)
            (self.contributions / (old.stem + ".bin")).unlink(missing_ok=True)

    def rounds(self) -> list[int]:
        return [int(p.stem) for p in sorted(self.receipts.glob("*.json"))]

    def get(self, round_: int) -> Optional[SignedReceipt]:
        path = self.receipts / f"{round_:010d}.json"
        if not path.exists():
            return None
        return SignedReceipt.model_validate_json(path.read_bytes())

    def contribution(self, round_: int) -> Optional[bytes]:
        path = self.contributions / f"{round_:010d}.bin"
        return path.read_bytes() if path.exists() else None

    def latest(self) -> Optional[SignedReceipt]:
        rounds = self.rounds()
        return self.get(rounds[-1]) if rounds else None


def load_progress(path: Path) -> dict:
    """The miner's progress file (round, step, loss), or {} if absent/partial."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def write_progress(path: Path, **fields) -> None:
    """Rename-atomic but not fsynced: written every step, losing one on a crash is fine."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(fields))
    tmp.replace(path)
