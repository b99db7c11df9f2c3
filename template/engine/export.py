"""The trained model as files other tools load: ``model.safetensors`` (the parameters, float32), a
``config.json`` that describes the architecture, and a ``README.md`` model card.

:func:`export_model` writes them from an agreed global state (:mod:`template.engine.state` bytes);
:func:`load_exported` builds the :class:`~template.engine.model.GPT` back from such a directory and
nothing else, with the same bits as the state's (so its logits equal the checkpoint's on the same
machine). The weights load with the ``safetensors`` library alone::

    from safetensors.torch import load_file
    weights = load_file("out/model.safetensors")   # {"transformer.wte.weight": ..., ...}

Tensor names are ``GPT.named_parameters()``'s (nanoGPT's, ``transformer.h.{i}.attn.c_attn.weight``
and so on); the LM head is tied to ``transformer.wte.weight`` and not stored twice
(``tie_word_embeddings``). Tokens are UTF-8 bytes (``"tokenizer": "bytes"``, vocabulary 256), or, for a run
on a tokenized dataset, those of the ``tokenizer.json`` exported beside the weights (``"tokenizer":
"tokenizer.json"``; without one the model loads, but text cannot be encoded for it: ``"tokenizer": null``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch

from template.config.presets import Preset
from template.config.run import TrainingConfig
from template.engine import checkpoint
from template.engine.model import GPT, param_count
from template.engine.state import StateFormat

__all__ = [
    "CONFIG_FORMAT",
    "ExportError",
    "export_model",
    "latest_in",
    "load_exported",
    "load_tokenizer",
    "read_config",
]

CONFIG_FORMAT = "tensorswarm.gpt"
CONFIG_VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
CARD = "README.md"
TOKENIZER = "tokenizer.json"
MAX_CONFIG_BYTES = 64 * 1024
_ARCH_FIELDS = ("vocab_size", "n_positions", "d_model", "n_layer", "n_head")


class ExportError(ValueError):
    """An exported model directory (or a state to export) that cannot be used; the message names the path."""


def _architecture(preset: Preset) -> dict[str, Any]:
    return {
        "format": CONFIG_FORMAT,
        "version": CONFIG_VERSION,
        "architecture": "GPT",
        "vocab_size": preset.vocab_size,
        "n_positions": preset.seq_len,
        "d_model": preset.d_model,
        "n_layer": preset.n_layer,
        "n_head": preset.n_head,
        "layer_norm_eps": 1e-5,
        "activation": "gelu",
        "position_embedding": "learned",
        "tie_word_embeddings": True,
        "tokenizer": "bytes" if preset.vocab_size == 256 else None,
        "dtype": "float32",
    }


def export_model(
    cfg: TrainingConfig,
    state: bytes,
    out: Path,
    *,
    run_id: str = "",
    source: str = "",
    tokenizer: Optional[Path] = None,
) -> Path:
    """Write the model of global state ``state`` (a run of ``cfg``) to the new directory ``out``.

    Refuses (:class:`ExportError`) a state that is not this run's, and an ``out`` that already exists:
    an earlier export is never overwritten. The files are written to a temporary directory beside
    ``out`` and renamed into place, so ``out`` is either complete or absent."""
    from safetensors.torch import save_file

    out = Path(out)
    if out.exists():
        raise ExportError(f"{out} already exists: choose another --out, or remove it first")
    fmt = StateFormat(cfg)
    try:
        parsed = fmt.parse(state)
    except ValueError as error:
        raise ExportError(f"{source or 'the state'}: {error}") from None
    sha = checkpoint.state_hash(state)
    model = fmt.model(parsed)
    weights = {name: p.detach().contiguous() for name, p in model.named_parameters()}
    config = _architecture(fmt.preset)
    if tokenizer is not None:
        vocab = _tokenizer_vocab(Path(tokenizer))
        if vocab != fmt.preset.vocab_size:
            raise ExportError(f"{tokenizer}: {vocab} tokens, the model embeds {fmt.preset.vocab_size}")
        config["tokenizer"] = TOKENIZER
    config["tensorswarm"] = {
        "preset": cfg.preset,
        "strategy": cfg.strategy,
        "run_id": run_id,
        "round": parsed.round,
        "state_sha256": sha,
        "num_params": model.num_params(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_file(weights, str(tmp / WEIGHTS), metadata={"format": "pt", "state_sha256": sha})
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        if tokenizer is not None:
            shutil.copyfile(tokenizer, tmp / TOKENIZER)
        (tmp / CARD).write_text(_card(config))
        for f in tmp.iterdir():
            with open(f, "rb") as handle:
                os.fsync(handle.fileno())
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _card(config: dict) -> str:
    ts = config["tensorswarm"]
    run = f"run `{ts['run_id']}`, " if ts["run_id"] else ""
    return f"""# tensorswarm GPT ({ts["preset"]}, round {ts["round"]})

A byte-level GPT-style decoder trained by a tensorswarm swarm ({run}strategy `{ts["strategy"]}`): the
global state the swarm agreed after round {ts["round"]}, sha256 `{ts["state_sha256"]}`.

| | |
|---|---|
| parameters | {ts["num_params"]:,} |
| layers / heads / width | {config["n_layer"]} / {config["n_head"]} / {config["d_model"]} |
| context | {config["n_positions"]} tokens |
| tokens | {_tokens_line(config)} |
| LM head | tied to the token embedding |

Files: `model.safetensors` (float32 parameters, nanoGPT names), `config.json` (the architecture).

    python -m template.generate . --prompt "def main(" --max-new-tokens 200

or, with the safetensors library alone:

    from safetensors.torch import load_file
    weights = load_file("model.safetensors")

The model is as good as the swarm's training made it by this round; nothing here was evaluated beyond
the loss the swarm and its validators measured.
"""


def _tokens_line(config: dict) -> str:
    if config["tokenizer"] == "bytes":
        return f"UTF-8 bytes (vocabulary {config['vocab_size']})"
    if config["tokenizer"] == TOKENIZER:
        return f"BPE, `tokenizer.json` (vocabulary {config['vocab_size']})"
    return f"vocabulary {config['vocab_size']}; no tokenizer was exported with it"


def _tokenizer_vocab(path: Path) -> int:
    try:
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(path)).get_vocab_size(with_added_tokens=True)
    except Exception as error:  # the library raises plain Exceptions
        raise ExportError(f"{path}: not a tokenizer file ({error})") from None


def load_tokenizer(directory: Path, config: dict):
    """The exported model's tokenizer (a `tokenizers.Tokenizer`), or None for a byte-level model."""
    if config["tokenizer"] == "bytes":
        return None
    if config["tokenizer"] != TOKENIZER:
        raise ExportError(f"{Path(directory) / CONFIG}: no tokenizer was exported with this model (export --tokenizer)")
    from tokenizers import Tokenizer

    path = Path(directory) / TOKENIZER
    try:
        return Tokenizer.from_file(str(path))
    except Exception as error:  # the library raises plain Exceptions
        raise ExportError(f"{path}: not a tokenizer file ({error})") from None


def read_config(directory: Path) -> dict:
    """``config.json`` of an exported model, checked (:class:`ExportError` naming the file otherwise)."""
    path = Path(directory) / CONFIG
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ExportError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes")
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise ExportError(f"{path}: not found (is {directory} an exported model?)") from None
    except (OSError, ValueError) as error:
        raise ExportError(f"{path}: unreadable ({error})") from None
    if not isinstance(config, dict) or config.get("format") != CONFIG_FORMAT:
        raise ExportError(f"{path}: not a {CONFIG_FORMAT} config")
    if config.get("version") != CONFIG_VERSION:
        raise ExportError(f"{path}: version {config.get('version')!r}, this reader knows {CONFIG_VERSION}")
    for field in _ARCH_FIELDS:
        value = config.get(field)
        if type(value) is not int or not 0 < value <= 1 << 20:
            raise ExportError(f"{path}: {field} must be a positive int, got {value!r}")
    if config["d_model"] % config["n_head"]:
        raise ExportError(f"{path}: d_model {config['d_model']} is not a multiple of n_head {config['n_head']}")
    if config.get("tokenizer") not in ("bytes", TOKENIZER, None) or not config.get("tie_word_embeddings"):
        raise ExportError(f"{path}: tokenizer must be 'bytes', 'tokenizer.json' or null, with a tied LM head")
    if config["tokenizer"] == "bytes" and config["vocab_size"] != 256:
        raise ExportError(f"{path}: a byte-level model has 256 tokens, not {config['vocab_size']}")
    return config


def load_exported(directory: Path, device: str | torch.device = "cpu") -> tuple[GPT, dict]:
    """The model of an exported directory (eval mode) and its config. Every tensor must be there, with
    the config's shapes, float32 and finite; anything else is refused with the file named."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    config = read_config(directory)
    preset = Preset(
        name=str(config.get("tensorswarm", {}).get("preset", "exported")),
        d_model=config["d_model"],
        n_layer=config["n_layer"],
        n_head=config["n_head"],
        seq_len=config["n_positions"],
        vocab_size=config["vocab_size"],
    )
    path = directory / WEIGHTS
    try:
        weights = load_file(str(path))
    except FileNotFoundError:
        raise ExportError(f"{path}: not found") from None
    except (SafetensorError, OSError, ValueError) as error:
        raise ExportError(f"{path}: not a readable safetensors file ({error})") from None
    # Before the model is built: a config that does not describe these weights must not size an allocation.
    count = sum(t.numel() for t in weights.values())
    if count != param_count(preset):
        raise ExportError(f"{path}: {count} values, the config's model has {param_count(preset)}")
    model = GPT(preset, seed=0)
    want = dict(model.named_parameters())
    if set(weights) != set(want):
        missing, extra = sorted(set(want) - set(weights))[:3], sorted(set(weights) - set(want))[:3]
        raise ExportError(f"{path}: tensors differ from the config's model (missing {missing}, unexpected {extra})")
    with torch.no_grad():
        for name, p in want.items():
            t = weights[name]
            if t.dtype != torch.float32 or t.shape != p.shape:
                raise ExportError(f"{path}: {name} is {t.dtype} {list(t.shape)}, expected float32 {list(p.shape)}")
            if not bool(torch.isfinite(t).all()):
                raise ExportError(f"{path}: {name} holds NaN or Inf")
            p.copy_(t)
    return model.to(device).eval(), config


def latest_in(checkpoint_dir: Path) -> Optional[str]:
    """The sha256 of the newest state (highest round) among the files of an orchestrator's checkpoint
    directory, from their headers alone, or None when there is none. Files that are not states are
    skipped (the full check comes when the chosen one is read)."""
    best: tuple[int, str] | None = None
    for f in Path(checkpoint_dir).glob("*"):
        if len(f.name) != 64 or not f.is_file():
            continue
        meta = checkpoint.read_meta(f)
        round_ = meta.get("round") if meta else None
        if type(round_) is int and (best is None or (round_, f.name) > best):
            best = (round_, f.name)
    return best[1] if best else None
