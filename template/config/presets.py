"""Model presets: GPT-style byte-level decoders, from a CPU demo to a GPU run, each with the training
defaults that fit it (its context as ``seq_len``, a batch size, H and an inner learning rate).
:class:`~template.config.run.TrainingConfig` fills whichever of those fields a run leaves out from its
preset, so ``TrainingConfig(preset="small")`` is the small preset's run.

python -m template.config.presets list
python -m template.config.presets write small run.json    # for `python -m orchestrator --run-config run.json`
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, fields

#: The TrainingConfig fields a preset sets; the other fields have one default for every preset.
RUN_FIELDS = ("seq_len", "batch_size", "inner_steps", "inner_lr")


@dataclass(frozen=True)
class Preset:
    name: str
    # architecture
    d_model: int
    n_layer: int
    n_head: int
    seq_len: int  # context length, and the run's default seq_len
    vocab_size: int = 256  # byte-level
    dropout: float = 0.0
    # training defaults, sized for the preset's hardware class (the tiny run's unless given)
    batch_size: int = 8
    inner_steps: int = 20  # H
    inner_lr: float = 3e-3

    @property
    def approx_params(self) -> int:
        # 12·d² per block (attention 4d², MLP 8d²) + embeddings.
        return 12 * self.n_layer * self.d_model**2 + (self.vocab_size + self.seq_len) * self.d_model

    @property
    def run_defaults(self) -> dict[str, int | float]:
        """The :data:`RUN_FIELDS` of a run on this preset."""
        return {name: getattr(self, name) for name in RUN_FIELDS}


PRESETS: dict[str, Preset] = {
    "tiny": Preset("tiny", d_model=64, n_layer=2, n_head=4, seq_len=64, batch_size=8, inner_steps=20, inner_lr=3e-3),
    "small": Preset(
        "small", d_model=256, n_layer=6, n_head=8, seq_len=256, batch_size=16, inner_steps=50, inner_lr=1e-3
    ),
    "medium": Preset(
        "medium", d_model=768, n_layer=12, n_head=12, seq_len=512, batch_size=8, inner_steps=100, inner_lr=6e-4
    ),
    "large": Preset(
        "large", d_model=1024, n_layer=24, n_head=16, seq_len=1024, batch_size=4, inner_steps=200, inner_lr=3e-4
    ),
}

# The per-preset training defaults other than seq_len, as older callers spell them
# (``TrainingConfig(preset=n, seq_len=..., **RUN_DEFAULTS[n])``).
RUN_DEFAULTS: dict[str, dict] = {
    name: {k: v for k, v in p.run_defaults.items() if k != "seq_len"} for name, p in PRESETS.items()
}


def get(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None


def defaults_by_preset(field: str) -> str:
    """``"tiny 64, small 256, ..."``: each preset's default for one of :data:`RUN_FIELDS` (for help texts)."""
    return ", ".join(f"{p.name} {getattr(p, field):g}" for p in PRESETS.values())


def run_config(name: str) -> str:
    """JSON of a TrainingConfig for this preset (what --run-config reads)."""
    from template.config.run import TrainingConfig  # run imports this module

    get(name)  # the "unknown preset" error, before pydantic's
    return TrainingConfig(preset=name).model_dump_json(indent=2) + "\n"


USAGE = "usage: python -m template.config.presets list | write NAME FILE"
_ARCHITECTURE = [f.name for f in fields(Preset) if f.name != "name" and f.name not in RUN_FIELDS]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["write"] and len(args) == 3:
        try:
            text = run_config(args[1])
        except ValueError as error:
            print(f"python -m template.config.presets: error: {error}", file=sys.stderr)
            return 2
        with open(args[2], "w") as fh:
            fh.write(text)
        print(f"wrote {args[2]}: preset {args[1]}")
        return 0
    if args[:1] != ["list"] or len(args) != 1:
        print(USAGE, file=sys.stderr)
        return 2
    for p in PRESETS.values():
        values = asdict(p)
        architecture = {k: values[k] for k in _ARCHITECTURE}
        print(f"{p.name:7s} ~{p.approx_params / 1e6:7.1f}M params  {architecture}  run defaults {p.run_defaults}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
