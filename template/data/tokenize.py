"""Turn text into a tokenized dataset the orchestrator trains from (``--dataset DIR``).

    python -m template.data.tokenize --input ./corpus --out ./tokens [--vocab-size 4096]
    python -m template.data.tokenize --input a.txt b.txt --out ./tokens --tokenizer tokenizer.json

Trains a byte-level BPE tokenizer on the input (the ``tokenizers`` library, on this machine: nothing is
downloaded), or uses the one ``--tokenizer`` names, and writes ``tokenizer.json`` plus shards in llm.c's
layout (``tokens_000000.bin``: a 256-int32 header, then uint16 tokens; uint32 with Llama 3's header when
the vocabulary exceeds 65 536). Each input file is one document, ended by ``<|endoftext|>``. Files are read
and encoded a piece at a time, so the corpus never has to fit in memory. ``--out`` must be new or empty.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a file: make the repo importable
    sys.path.insert(0, os.fspath(Path(__file__).resolve().parents[2]))

from template.config import argtypes
from template.data.tokens import HEADER_INTS, LLMC

EOT = "<|endoftext|>"
PIECE_BYTES = 1 << 20  # text encoded at a time (cut at a line end)
MAX_VOCAB = 1 << 24


def text_files(paths: list[Path]) -> list[Path]:
    """The input files, directories walked (hidden entries skipped), in a stable order."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out += sorted(
                p for p in path.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.parts)
            )
        elif path.is_file():
            out.append(path)
        else:
            raise SystemExit(f"tokenize: error: {path}: no such file or directory")
    if not out:
        raise SystemExit("tokenize: error: no input files")
    return out


def pieces(path: Path) -> Iterator[str]:
    """``path``'s text, about PIECE_BYTES at a time, cut after a newline (undecodable bytes replaced)."""
    with open(path, "rb") as f:
        rest = b""
        while block := f.read(PIECE_BYTES):
            block = rest + block
            cut = block.rfind(b"\n") + 1 or len(block)
            rest = block[cut:]
            yield block[:cut].decode("utf-8", errors="replace")
        if rest:
            yield rest.decode("utf-8", errors="replace")


def train_tokenizer(files: list[Path], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # From our own reader: any bytes (undecodable ones replaced), a piece at a time.
    tokenizer.train_from_iterator((piece for f in files for piece in pieces(f)), trainer)
    return tokenizer


class ShardWriter:
    """Tokens into ``tokens_NNNNNN.bin`` files of at most ``shard_tokens`` tokens each."""

    def __init__(self, out: Path, dtype: np.dtype, magic: int, shard_tokens: int):
        self.out, self.dtype, self.magic, self.shard_tokens = out, dtype, magic, shard_tokens
        self.buffer: list[np.ndarray] = []
        self.held = 0
        self.files: list[Path] = []
        self.tokens = 0

    def add(self, ids: list[int]) -> None:
        self.buffer.append(np.asarray(ids, dtype=self.dtype))
        self.held += len(ids)
        while self.held >= self.shard_tokens:
            self._write(self.shard_tokens)

    def _write(self, n: int) -> None:
        data = np.concatenate(self.buffer) if self.buffer else np.empty(0, self.dtype)
        head, rest = data[:n], data[n:]
        header = np.zeros(HEADER_INTS, dtype="<i4")
        header[:3] = (self.magic, LLMC[self.magic][0], head.size)
        path = self.out / f"tokens_{len(self.files):06d}.bin"
        with open(path, "wb") as f:
            f.write(header.tobytes())
            f.write(head.astype(self.dtype.newbyteorder("<")).tobytes())
        self.files.append(path)
        self.tokens += head.size
        self.buffer, self.held = ([rest] if rest.size else []), rest.size

    def close(self) -> None:
        if self.held:
            self._write(self.held)


def build_parser() -> argparse.ArgumentParser:
    from template.config.cli import ArgumentParser

    parser = ArgumentParser(prog="python -m template.data.tokenize", description=__doc__)
    parser.add_argument(
        "--input", nargs="+", type=argtypes.expanded_path, required=True, help="text files or directories"
    )
    parser.add_argument("--out", type=argtypes.expanded_path, required=True, help="new or empty directory")
    parser.add_argument("--vocab-size", type=argtypes.positive_int, default=4096, help="BPE vocabulary to train")
    parser.add_argument(
        "--tokenizer", type=argtypes.expanded_path, default=None, help="a tokenizer.json to use instead"
    )
    parser.add_argument("--shard-tokens", type=argtypes.positive_int, default=1 << 24, help="tokens per .bin file")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 257 <= args.vocab_size <= MAX_VOCAB:
        parser.error(f"--vocab-size must be in 257..{MAX_VOCAB} (the 256 bytes are the base alphabet)")
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        parser.error(f"--out {out} exists and is not an empty directory")
    files = text_files([Path(p) for p in args.input])
    if args.tokenizer:
        from tokenizers import Tokenizer

        try:
            tokenizer = Tokenizer.from_file(args.tokenizer)
        except Exception as error:  # the library raises plain Exceptions
            print(f"tokenize: error: {args.tokenizer}: not a tokenizer file ({error})", file=sys.stderr)
            return 1
    else:
        tokenizer = train_tokenizer(files, args.vocab_size)
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    eot = tokenizer.token_to_id(EOT)
    magic = 20240520 if vocab <= 1 << 16 else 20240801
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out / "tokenizer.json"))
    writer = ShardWriter(out, LLMC[magic][1], magic, args.shard_tokens)
    for path in files:
        for piece in pieces(path):
            writer.add(tokenizer.encode(piece).ids)
        if eot is not None:
            writer.add([eot])
    writer.close()
    print(
        f"{writer.tokens} tokens (vocabulary {vocab}) from {len(files)} file(s) in {len(writer.files)} shard(s) in {out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
