"""The dataset manifest: which content-addressed shards make up the training and held-out ranges.

Torch-free so the wire messages that carry it (``RunInfo``) import nothing heavy."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, StringConstraints, model_validator

_SHA256_RE = re.compile(r"[0-9a-f]{64}")


class DatasetError(Exception):
    """Bad or unusable data: a corpus, manifest, shard or sampling request that cannot be served.

    Messages are meant for people: they name the file or hash at fault and, where there is one, the fix.
    """


class MissingShardError(DatasetError):
    """A shard (or manifest) the store does not have; servers map this to 404, not to a corrupt-data error."""


# --------------------------------------------------------------------------- hashing helpers


def sha256_hex(data: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def is_sha256(value: object) -> bool:
    """True for exactly 64 lowercase hex digits (what :func:`sha256_hex` returns)."""
    return isinstance(value, str) and _SHA256_RE.fullmatch(value) is not None


# --------------------------------------------------------------------------- manifest

Sha256Str = Annotated[str, StringConstraints(strict=True, pattern=r"^[0-9a-f]{64}$")]


class ShardInfo(BaseModel):
    """One shard: its position in the corpus, its content hash (its name everywhere) and its size."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    index: Annotated[StrictInt, Field(ge=0)]
    sha256: Sha256Str
    size: Annotated[StrictInt, Field(ge=1)]


class DatasetManifest(BaseModel):
    """What a dataset is: its shards in corpus order, and where the held-out range starts.

    Shards ``index < heldout_start`` are for training, the rest are held out for validation only.
    The validators below make a manifest received over the network safe to sample from: indexes are
    0..n-1 in order, every shard but the last is exactly ``shard_size`` bytes, sizes add up to
    ``total_bytes``, and both ranges are non-empty.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[StrictStr, Field(min_length=1)]
    total_bytes: Annotated[StrictInt, Field(ge=2)]
    shard_size: Annotated[StrictInt, Field(ge=1)]
    shards: list[ShardInfo]
    heldout_start: StrictInt
    # A tokenized dataset: little-endian unsigned tokens of this width, all below vocab_size. The defaults
    # are bytes (and leave the canonical JSON, so byte datasets keep their ids).
    token_bytes: Literal[1, 2, 4] = 1
    vocab_size: Annotated[StrictInt, Field(ge=2, le=2**24)] = 256

    @model_validator(mode="after")
    def _consistent(self) -> DatasetManifest:
        n = len(self.shards)
        if n < 2:
            raise ValueError(f"a dataset needs at least 2 shards (one for training, one held out), got {n}")
        for position, shard in enumerate(self.shards):
            if shard.index != position:
                raise ValueError(
                    f"shard at position {position} has index {shard.index}; indexes must be 0..{n - 1} in order"
                )
            if position < n - 1 and shard.size != self.shard_size:
                raise ValueError(
                    f"shard {position} is {shard.size} bytes; every shard but the last must be shard_size={self.shard_size}"
                )
        if self.shards[-1].size > self.shard_size:
            raise ValueError(f"last shard is {self.shards[-1].size} bytes, more than shard_size={self.shard_size}")
        total = sum(s.size for s in self.shards)
        if total != self.total_bytes:
            raise ValueError(f"shard sizes add up to {total}, not total_bytes={self.total_bytes}")
        if self.token_bytes == 1 and self.vocab_size > 256:
            raise ValueError(f"a vocabulary of {self.vocab_size} needs tokens wider than a byte")
        if self.token_bytes == 2 and self.vocab_size > 2**16:
            raise ValueError(f"a vocabulary of {self.vocab_size} needs 4-byte tokens")
        if self.shard_size % self.token_bytes or any(s.size % self.token_bytes for s in self.shards):
            raise ValueError(f"shard sizes must be whole {self.token_bytes}-byte tokens")
        if not 1 <= self.heldout_start <= n - 1:
            raise ValueError(
                f"heldout_start must be in 1..{n - 1} so both ranges are non-empty, got {self.heldout_start}"
            )
        return self

    @property
    def train_shards(self) -> list[ShardInfo]:
        return self.shards[: self.heldout_start]

    @property
    def heldout_shards(self) -> list[ShardInfo]:
        return self.shards[self.heldout_start :]

    def shard(self, index: int) -> ShardInfo:
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(self.shards):
            raise DatasetError(f"dataset {self.name!r} has no shard {index!r} (it has {len(self.shards)})")
        return self.shards[index]

    def canonical_json(self) -> bytes:
        """Sorted keys, no whitespace, ASCII only: the same bytes from the same manifest everywhere."""
        data = self.model_dump(mode="json")
        if self.token_bytes == 1 and self.vocab_size == 256:  # bytes: the manifest as it always was
            del data["token_bytes"], data["vocab_size"]
        return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")

    def manifest_id(self) -> str:
        """sha256 of :meth:`canonical_json`: names this exact dataset (content, split and all)."""
        return sha256_hex(self.canonical_json())
