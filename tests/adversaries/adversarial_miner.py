"""A dishonest miner, for tests only: runs the production neurons/miner.py but
tampers with what it serves to validators (its stored receipt + contribution),
re-signing the receipt with its own hotkey so signatures stay valid.

    TENSORSWARM_ADVERSARY=KIND [TENSORSWARM_ADVERSARY_COPY_FROM=DIR] \
        python tests/adversaries/adversarial_miner.py <miner.py flags>

(from the environment, because the meta-miner starts it with the miner's flags:
`neurons/meta_miner.py --miner-script tests/adversaries/adversarial_miner.py`)

KIND: loss-liar (reports 30% lower losses), free-rider (serves a zero
contribution), noise (random contribution of the honest norm), sign-flip (−Δ),
copier (serves another miner's contribution for the same round, from DIR),
stale (serves an earlier round's contribution again; honest only in its first round).
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, os.fspath(REPO))

KINDS = ("loss-liar", "free-rider", "noise", "sign-flip", "copier", "stale")


def main() -> int:
    argv = sys.argv[1:]
    kind = os.environ["TENSORSWARM_ADVERSARY"]
    copy_from = os.environ.get("TENSORSWARM_ADVERSARY_COPY_FROM")
    copy_from = Path(copy_from) if copy_from else None
    assert kind in KINDS, kind

    import torch

    from template.engine import compression
    from template.miner import receipts

    original_put = receipts.ReceiptStore.put
    signers = {}
    original_sign = receipts.sign_receipt

    def remember_signer(receipt, sign):
        signers["sign"] = sign
        return original_sign(receipt, sign)

    receipts.sign_receipt = remember_signer

    def tampered_put(self, signed, contribution):
        r = signed.receipt
        update = {}
        blob = contribution
        if kind == "loss-liar":
            update["losses"] = [x * 0.7 for x in r.losses]
        elif contribution is not None and kind in ("free-rider", "noise", "sign-flip"):
            delta = _decompress(contribution)
            if kind == "free-rider":
                delta = {n: torch.zeros_like(t) for n, t in delta.items()}
            elif kind == "sign-flip":
                delta = {n: -t for n, t in delta.items()}
            else:  # noise with the honest norm
                norm = torch.sqrt(sum((t.double() ** 2).sum() for t in delta.values()))
                g = torch.Generator().manual_seed(r.round)
                noise = {n: torch.randn(t.shape, generator=g) for n, t in delta.items()}
                scale = norm / torch.sqrt(sum((t.double() ** 2).sum() for t in noise.values()))
                delta = {n: (t * scale).float() for n, t in noise.items()}
            blob = compression.compress(delta, _scheme(contribution)).to_bytes()
        elif kind == "copier" and copy_from is not None:
            path = copy_from / "contributions" / f"{r.round:010d}.bin"
            for _ in range(100):
                if path.exists():
                    break
                time.sleep(0.05)
            blob = path.read_bytes() if path.exists() else contribution
        elif kind == "stale":
            # The newest earlier round it kept (not just r−1: after a missed round it keeps replaying).
            earlier = [x for x in self.rounds() if x < r.round and self.contribution(x) is not None]
            blob = self.contribution(max(earlier)) if earlier else contribution
        if blob is not contribution and blob is not None:
            # A careful cheat keeps its receipt consistent with what it serves.
            from template.engine.aggregation import vector_norm

            update["contribution_sha256"] = hashlib.sha256(blob).hexdigest()
            update["contribution_bytes"] = len(blob)
            update["contribution_norm"] = vector_norm(_decompress(blob))
        if update:
            signed = original_sign(r.model_copy(update=update), signers["sign"])
        return original_put(self, signed, blob)

    # The round manager signs and stores through `receipts` at call time, so both patches take effect.
    receipts.ReceiptStore.put = tampered_put
    from neurons import miner

    return miner.main(argv)


def _decompress(blob: bytes):
    """Parse our own honest contribution; its meta names the tensor shapes."""
    from template.engine import checkpoint, compression

    _, meta = checkpoint.loads(blob)
    return compression.Compressed.from_bytes(blob, meta["shapes"]).decompress()


def _scheme(blob: bytes) -> str:
    from template.engine import checkpoint

    _, meta = checkpoint.loads(blob)
    return meta.get("scheme", "int8")


if __name__ == "__main__":
    raise SystemExit(main())
