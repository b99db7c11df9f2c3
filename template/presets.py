"""Model presets: GPT-style byte-level decoders, from a CPU demo to a GPU run.

    python -m template.presets list
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Preset:
    name: str
    d_model: int
    n_layer: int
    n_head: int
    seq_len: int
    vocab_size: int = 256  # byte-level
    dropout: float = 0.0

    @property
    def approx_params(self) -> int:
        # 12·d² per block (attention 4d², MLP 8d²) + embeddings.
        return 12 * self.n_layer * self.d_model**2 + (self.vocab_size + self.seq_len) * self.d_model


PRESETS: dict[str, Preset] = {
    "tiny": Preset("tiny", d_model=64, n_layer=2, n_head=4, seq_len=64),
    "small": Preset("small", d_model=256, n_layer=6, n_head=8, seq_len=256),
    "medium": Preset("medium", d_model=768, n_layer=12, n_head=12, seq_len=512),
    "large": Preset("large", d_model=1024, n_layer=24, n_head=16, seq_len=1024),
}


def get(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] != ["list"]:
        print("usage: python -m template.presets list", file=sys.stderr)
        return 2
    for p in PRESETS.values():
        fields = {k: v for k, v in asdict(p).items() if k != "name"}
        print(f"{p.name:7s} ~{p.approx_params / 1e6:7.1f}M params  {fields}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
