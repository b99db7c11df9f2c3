"""Domain-tagged signatures of receipts and contributions (hotkey keys; verified by peers and validators)."""

from __future__ import annotations

from bittensor.sp_core import Keypair

from template.wire.receipts import Receipt, SignedReceipt

SIGNATURE_BYTES = 64  # sr25519 and ed25519 signatures are both 64 bytes
MESSAGE_DOMAIN = "tensorswarm.contribution.v1"


def contribution_message(context: str, round: int, rank: int, sha256_hex: str) -> bytes:
    """What a rank signs for its contribution. Binds the run/generation (``context``), the round,
    the sender's rank and the payload's hash, so a signature cannot be replayed into another round,
    generation or slot; the domain tag keeps it from being mistaken for any other signed message of
    the same hotkey (e.g. btauth requests). Validators verify served contributions with this too."""
    return f"{MESSAGE_DOMAIN}|{context}|{int(round)}|{int(rank)}|{sha256_hex}".encode()


def verify_signature(ss58: str, message: bytes, signature: bytes) -> bool:
    """True when ``signature`` is ``ss58``'s signature of ``message`` (never raises: garbage is invalid)."""
    try:
        return bool(Keypair(ss58_address=ss58).verify(message, signature))
    except Exception:  # a malformed key or signature is simply not valid
        return False


def sign_receipt(receipt: Receipt, sign) -> SignedReceipt:
    return SignedReceipt(receipt=receipt, signature=bytes(sign(SignedReceipt.message(receipt))).hex())


def verify_receipt(signed: SignedReceipt) -> bool:
    """True when the receipt is signed by the hotkey it names."""
    try:
        key = Keypair(ss58_address=signed.receipt.hotkey)
        return bool(key.verify(SignedReceipt.message(signed.receipt), bytes.fromhex(signed.signature)))
    except Exception:  # malformed address or signature
        return False
