"""Sample text from an exported model (``python -m template.export``'s directory).

    python -m template.generate ./model --prompt "def main(" --max-new-tokens 200 [--temperature 0.8]
        [--top-k 40] [--seed 0]

The prompt is encoded as UTF-8 bytes (a byte-level model's tokens) or with the model's exported
``tokenizer.json``, and cut to the model's context; the continuation is printed after it (bytes that are
not valid UTF-8 print as U+FFFD). ``--temperature 0``
always takes the most likely byte. Needs only the directory: no chain, wallet or orchestrator.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repo importable
    sys.path.insert(0, os.fspath(Path(__file__).resolve().parents[1]))

from template.config import argtypes

MAX_NEW_TOKENS = 1 << 16


def build_parser() -> argparse.ArgumentParser:
    from template.config.cli import ArgumentParser

    parser = ArgumentParser(prog="python -m template.generate", description=__doc__)
    parser.add_argument("model", type=argtypes.expanded_path, help="an exported model directory")
    parser.add_argument("--prompt", default="", help="text to continue (UTF-8)")
    parser.add_argument("--max-new-tokens", type=argtypes.positive_int, default=200)
    parser.add_argument("--temperature", type=argtypes.non_negative_float, default=0.8)
    parser.add_argument("--top-k", type=argtypes.non_negative_int, default=40, help="0: no cut")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def generate(model, prompt, max_new_tokens: int, temperature: float, top_k: int, seed: int) -> list[int]:
    """``prompt`` (token ids; bytes for a byte-level model) continued by ``max_new_tokens`` sampled tokens
    (the continuation only)."""
    import torch

    context = model.preset.seq_len
    ids = list(prompt) or [ord("\n") if model.preset.vocab_size == 256 else 0]  # an empty prompt: a line start
    out: list[int] = []
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _ in range(max_new_tokens):
            window = torch.tensor([ids[-context:]], dtype=torch.long)
            logits = model(window)[0][0, -1].double()
            if temperature == 0:
                token = int(logits.argmax())
            else:
                logits = logits / temperature
                if 0 < top_k < logits.numel():
                    cut = torch.topk(logits, top_k).values[-1]
                    logits = logits.masked_fill(logits < cut, float("-inf"))
                token = int(torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=g))
            ids.append(token)
            out.append(token)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.max_new_tokens > MAX_NEW_TOKENS:
        parser.error(f"--max-new-tokens must be at most {MAX_NEW_TOKENS}")
    from template.engine.export import ExportError, load_exported, load_tokenizer

    try:
        model, config = load_exported(Path(args.model))
        tokenizer = load_tokenizer(Path(args.model), config)
    except ExportError as error:
        print(f"generate: error: {error}", file=sys.stderr)
        return 1
    prompt = args.prompt.encode("utf-8") if tokenizer is None else tokenizer.encode(args.prompt).ids
    ids = generate(model, prompt, args.max_new_tokens, args.temperature, args.top_k, args.seed)
    text = bytes(ids).decode("utf-8", errors="replace") if tokenizer is None else tokenizer.decode(ids)
    sys.stdout.write(args.prompt + text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
