"""Pre-tokenized datasets: a directory of token files, cut into the run's content-addressed shards without
ever holding the corpus in memory.

Accepted files (read in name order, concatenated):

- ``*.bin`` in the layout llm.c and modded-nanogpt use for FineWeb: a header of 256 little-endian int32
  (magic, version, token count), then the tokens: magic 20240520 / version 1 holds uint16 tokens (GPT-2's
  tokenizer), magic 20240801 / version 7 uint32 (Llama 3's);
- ``*.npy``: a one-dimensional uint16 or uint32 array (little-endian, C order).

The vocabulary is the one of ``tokenizer.json`` in the directory (what ``python -m
template.data.tokenize`` writes), else the llm.c header's tokenizer (GPT-2: 50 257, Llama 3: 128 256),
else the largest token + 1; a ``vocab_size`` the caller gives must hold every token. Each file is checked
whole, in chunks, as it is cut: a bad header, a size that does not match it, a wrong dtype or shape, or a
token outside the vocabulary is refused with the path named (:class:`DatasetError`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from template.data.checks import check_int
from template.wire.dataset import DatasetError, DatasetManifest, ShardInfo

HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
# magic -> (version, token dtype, the vocabulary of the tokenizer that layout comes with)
LLMC = {20240520: (1, np.dtype("<u2"), 50257), 20240801: (7, np.dtype("<u4"), 128256)}
CHUNK_TOKENS = 1 << 19  # tokens read (and checked) at a time
SUFFIXES = (".bin", ".npy")


@dataclass(frozen=True)
class TokenFile:
    path: Path
    dtype: np.dtype
    offset: int  # where the tokens start
    count: int
    header_vocab: Optional[int]  # the llm.c layout's tokenizer, if any


def token_file(path: Path) -> TokenFile:
    """Parse and check a token file's header and size (not its tokens)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            if path.suffix == ".npy":
                return _npy(path, f, size)
            header = np.frombuffer(f.read(HEADER_BYTES), dtype="<i4")
    except OSError as error:
        raise DatasetError(f"{path}: unreadable ({error.strerror or error})") from None
    if header.size != HEADER_INTS:
        raise DatasetError(f"{path}: shorter than the {HEADER_BYTES}-byte llm.c header")
    magic, version, count = (int(v) for v in header[:3])
    if magic not in LLMC:
        raise DatasetError(f"{path}: bad magic {magic} (llm.c token files start with {' or '.join(map(str, LLMC))})")
    want_version, dtype, vocab = LLMC[magic]
    if version != want_version:
        raise DatasetError(f"{path}: version {version}, expected {want_version} for magic {magic}")
    if count < 0 or HEADER_BYTES + count * dtype.itemsize != size:
        raise DatasetError(
            f"{path}: the header says {count} tokens ({HEADER_BYTES + max(count, 0) * dtype.itemsize} bytes), "
            f"the file is {size} bytes"
        )
    return TokenFile(path, dtype, HEADER_BYTES, count, vocab)


def _npy(path: Path, f, size: int) -> TokenFile:
    try:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
    except (ValueError, OSError, SyntaxError) as error:
        raise DatasetError(f"{path}: not a .npy file ({error})") from None
    if dtype not in (np.dtype("<u2"), np.dtype("<u4")) or dtype.hasobject:
        raise DatasetError(f"{path}: dtype {dtype.str}, expected little-endian uint16 or uint32 tokens")
    if len(shape) != 1 or fortran:
        raise DatasetError(f"{path}: shape {shape}, expected a one-dimensional array of tokens")
    offset = f.tell()
    if offset + shape[0] * dtype.itemsize != size:
        raise DatasetError(f"{path}: {shape[0]} tokens do not fill its {size} bytes")
    return TokenFile(path, np.dtype(dtype), offset, shape[0], None)


def token_files(directory: Path) -> list[TokenFile]:
    """The directory's token files, checked, in name order."""
    directory = Path(directory)
    try:
        files = sorted(p for p in directory.iterdir() if p.suffix in SUFFIXES and p.is_file())
    except OSError as error:
        raise DatasetError(f"{directory}: unreadable ({error.strerror or error})") from None
    if not files:
        raise DatasetError(f"{directory}: no token files (*.bin in llm.c's layout, or *.npy)")
    return [token_file(p) for p in files]


def is_token_dir(path: Path) -> bool:
    path = Path(path)
    return path.is_dir() and any(p.suffix in SUFFIXES for p in path.iterdir())


def tokenizer_vocab(directory: Path) -> Optional[int]:
    """The vocabulary of ``tokenizer.json`` in ``directory`` (a `tokenizers` file), or None when there is none."""
    path = Path(directory) / "tokenizer.json"
    if not path.exists():
        return None
    try:
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(path)).get_vocab_size(with_added_tokens=True)
    except Exception as error:  # the library's own exceptions are plain Exception subclasses
        raise DatasetError(f"{path}: not a tokenizer file ({error})") from None


def _chunks(tf: TokenFile) -> Iterator[np.ndarray]:
    """The file's tokens, ``CHUNK_TOKENS`` at a time, read (not memory-mapped: mapped pages would count
    toward the reader's resident memory)."""
    with open(tf.path, "rb") as f:
        f.seek(tf.offset)
        left = tf.count
        while left:
            n = min(left, CHUNK_TOKENS)
            chunk = np.fromfile(f, dtype=tf.dtype, count=n)
            if chunk.size != n:
                raise DatasetError(f"{tf.path}: ended {left - chunk.size} tokens early")
            left -= n
            yield chunk


def ingest_tokens(
    directory: Path,
    put: Callable[[bytes], str],
    *,
    shard_size: int,
    heldout_fraction: float,
    vocab_size: Optional[int] = None,
) -> DatasetManifest:
    """Cut a token directory into shards of ``shard_size`` bytes (``put`` stores each, returning its sha256)
    and return the manifest. Memory: one chunk and one shard, whatever the corpus size."""
    from template.data.corpus import heldout_count

    directory = Path(directory)
    files = token_files(directory)
    widths = {tf.dtype.itemsize for tf in files}
    if len(widths) != 1:
        raise DatasetError(f"{directory}: token files of different widths ({sorted(widths)} bytes): use one")
    width = widths.pop()
    vocab = tokenizer_vocab(directory) or next((tf.header_vocab for tf in files if tf.header_vocab), None)
    if vocab_size is not None:
        if vocab is not None and vocab_size < vocab:
            raise DatasetError(f"{directory}: its tokenizer has {vocab} tokens, more than vocab_size {vocab_size}")
        vocab = vocab_size
    shard_size = check_int(shard_size, "shard_size", minimum=width) // width * width
    infos: list[ShardInfo] = []
    shard, filled = bytearray(shard_size), 0  # the shard being filled: one buffer, reused
    largest = -1
    for tf in files:
        seen = 0
        for chunk in _chunks(tf):
            top = int(chunk.max()) if chunk.size else -1
            if vocab is not None and top >= vocab:
                at = int(np.argmax(chunk >= vocab))
                raise DatasetError(
                    f"{tf.path}: token {int(chunk[at])} at position {seen + at} is outside the vocabulary of {vocab}"
                )
            largest = max(largest, top)
            seen += chunk.size
            data = memoryview(chunk).cast("B")
            while data:
                n = min(len(data), shard_size - filled)
                shard[filled : filled + n] = data[:n]
                filled, data = filled + n, data[n:]
                if filled == shard_size:
                    infos.append(ShardInfo(index=len(infos), sha256=put(bytes(shard)), size=shard_size))
                    filled = 0
    if filled:
        infos.append(ShardInfo(index=len(infos), sha256=put(bytes(shard[:filled])), size=filled))
    total = sum(i.size for i in infos)
    if len(infos) < 2:
        raise DatasetError(
            f"{directory}: {total} bytes of tokens make {len(infos)} shard(s) of {shard_size} bytes; at least 2 are "
            "needed (one for training, one held out): use a smaller --shard-size-kb or more data"
        )
    vocab = vocab if vocab is not None else largest + 1
    held = heldout_count(len(infos), infos[-1].size, shard_size, heldout_fraction)
    return DatasetManifest(
        name=directory.name or "tokens",
        total_bytes=total,
        shard_size=shard_size,
        shards=infos,
        heldout_start=len(infos) - held,
        token_bytes=width,
        vocab_size=max(vocab, 2),
    )
