"""Model presets: GPT-style byte-level decoders, from a CPU demo to a GPU run.

python -m template.presets list
python -m template.presets write small run.json    # a run config for `python -m orchestrator --run-config run.json`
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


# Per-preset training defaults for a run config (sized for the preset's hardware class).
RUN_DEFAULTS: dict[str, dict] = {
    "tiny": {"batch_size": 8, "inner_steps": 20, "inner_lr": 3e-3},
    "small": {"batch_size": 16, "inner_steps": 50, "inner_lr": 1e-3},
    "medium": {"batch_size": 8, "inner_steps": 100, "inner_lr": 6e-4},
    "large": {"batch_size": 4, "inner_steps": 200, "inner_lr": 3e-4},
}


def run_config(name: str) -> str:
    """JSON of a TrainingConfig for this preset (what --run-config reads)."""
    from template.config.run import TrainingConfig  # protocol imports this module

    preset = get(name)
    config = TrainingConfig(preset=name, seq_len=preset.seq_len, **RUN_DEFAULTS[name])
    return config.model_dump_json(indent=2) + "\n"


USAGE = "usage: python -m template.presets list | write NAME FILE"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["write"] and len(args) == 3:
        try:
            text = run_config(args[1])
        except ValueError as error:
            print(f"python -m template.presets: error: {error}", file=sys.stderr)
            return 2
        with open(args[2], "w") as fh:
            fh.write(text)
        print(f"wrote {args[2]}: preset {args[1]}")
        return 0
    if args[:1] != ["list"] or len(args) != 1:
        print(USAGE, file=sys.stderr)
        return 2
    for p in PRESETS.values():
        fields = {k: v for k, v in asdict(p).items() if k != "name"}
        print(f"{p.name:7s} ~{p.approx_params / 1e6:7.1f}M params  {fields}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
