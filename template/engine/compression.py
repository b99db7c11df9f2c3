"""Pseudo-gradient compression with error feedback, and the wire format of a contribution.

Schemes (per tensor, on the flattened float32 values; ``n`` = numel):

- ``none``: the float32 values.
- ``int8``: symmetric absmax quantisation per chunk of ``chunk_size`` consecutive values: scale
  s = absmax(chunk)/127 (float32), q = round(x/s) ∈ [-127, 127] (int8), x̂ = q·s. Rounding to the
  nearest step gives |x − x̂| ≤ s/2 = absmax/254 per chunk (up to float32 rounding), well inside
  the absmax/127 budget.
- ``topk``: the k = clamp(round(fraction·n), 1, n) values of largest |x| (ties go to the lower index,
  so the choice is deterministic), sent as ascending flat indices (int32; int64 only for tensors
  with ≥ 2³¹ elements) and float32 values; everything else is zero.
- ``topk_int8``: top-k, then the kept values int8-quantised per chunk as above.
- ``sparseloco``: SparseLoCo-style chunked top-k with 2-bit values. Each chunk of ``chunk_size``
  consecutive values (the last may be shorter, length L) keeps its k = clamp(round(fraction·L), 1, L)
  values of largest |x| (chunks with equal k keep the same count, so every chunk is represented and
  the size is fixed). A kept value is sent as its offset within the chunk, packed in w bits (w = bits
  of min(chunk_size, n) − 1: 12 for 4096-value chunks), and a 2-bit code: its sign and whether its
  magnitude is in the chunk's upper half; the chunk sends two float32 magnitudes (``scales``: the
  mean |x| of its lower and of its upper half of kept values), so x̂ = ±lo or ±hi. At a fraction of
  1.5 % and 4096-value chunks that is 61 values per chunk at w + 2 + 64/61 ≈ 15 bits each, about
  140× fewer bytes than float32; error feedback carries what the 2-bit rounding and the dropped
  values lose into the next round.

:class:`ErrorFeedback` adds what the previous round's compression dropped to the next Δ before
compressing (EF-SGD), so over rounds the transmitted updates sum to the true Δs minus one bounded
residual.

A :class:`Compressed` is serialized with :mod:`template.engine.checkpoint` (canonical, checksummed), with a
versioned ``meta``. :meth:`Compressed.from_bytes` parses bytes from untrusted peers: given the
expected parameter spec ``{name: shape}`` it checks names, shapes, dtypes, lengths, index order and
range, finiteness and scale ranges, and raises :class:`CompressionError` on anything else.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from template.engine import checkpoint, sparseloco
from template.engine.sparseloco import topk_count

__all__ = [
    "SCHEMES",
    "SCHEME_PARTS",
    "DEFAULT_CHUNK_SIZE",
    "CompressionError",
    "CompressedTensor",
    "Compressed",
    "compress",
    "topk_count",
    "param_spec",
    "ErrorFeedback",
]

# The schemes, each with the parts (CompressedTensor fields) it serializes per parameter, in wire order.
SCHEME_PARTS: dict[str, tuple[str, ...]] = {
    "none": ("values",),
    "int8": ("scales", "values"),
    "topk": ("indices", "values"),
    "topk_int8": ("indices", "scales", "values"),
    # indices: w-bit chunk offsets, packed (uint8); scales: (lo, hi) per chunk; values: 2-bit codes, packed.
    "sparseloco": ("indices", "scales", "values"),
}
SCHEMES = tuple(SCHEME_PARTS)
DEFAULT_CHUNK_SIZE = 4096
MAX_CHUNK_SIZE = 1 << 24
FORMAT = "tensorswarm.compressed"
VERSION = 1
# A scale above this would make 127·scale overflow float32 on decompression.
MAX_SCALE = torch.finfo(torch.float32).max / 127
_SEP = "|"  # flat key = f"{param}|{part}"; parameter names never contain it


class CompressionError(ValueError):
    """A contribution cannot be compressed, or received bytes are not a valid contribution."""


def _index_dtype(numel: int) -> torch.dtype:
    return torch.int32 if numel <= torch.iinfo(torch.int32).max else torch.int64


def _n_chunks(n: int, chunk_size: int) -> int:
    return -(-n // chunk_size)


def param_spec(tensors: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """``{name: shape}`` of a state or Δ: what :meth:`Compressed.from_bytes` checks against."""
    return {name: tuple(t.shape) for name, t in tensors.items()}


@dataclass
class CompressedTensor:
    """One parameter's compressed values (all 1-D CPU tensors).

    ``values``: float32 (``none``, ``topk``) or int8 (``int8``, ``topk_int8``), ``numel`` long for
    the dense schemes, k long for the top-k ones. ``indices``: ascending flat indices of the kept
    values (top-k schemes). ``scales``: float32, one per chunk of ``values`` (int8 schemes).
    """

    shape: tuple[int, ...]
    values: torch.Tensor
    indices: torch.Tensor | None = None
    scales: torch.Tensor | None = None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def _quantize(x: torch.Tensor, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = x.numel()
    chunks = _n_chunks(n, chunk_size)
    xp = F.pad(x, (0, chunks * chunk_size - n)).view(chunks, chunk_size)
    scale = xp.abs().amax(dim=1) / 127
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))  # all-zero chunk: q = 0
    q = torch.round(xp / safe[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.reshape(-1)[:n].clone(), scale


def _dequantize(q: torch.Tensor, scales: torch.Tensor, chunk_size: int) -> torch.Tensor:
    n = q.numel()
    chunks = scales.numel()
    qp = F.pad(q.to(torch.float32), (0, chunks * chunk_size - n)).view(chunks, chunk_size)
    return (qp * scales[:, None]).reshape(-1)[:n]


def _topk_indices(x: torch.Tensor, k: int) -> torch.Tensor:
    """Ascending indices of the k largest |x|; among equal magnitudes the lower indices win.

    ``torch.topk`` does not specify which of several equal values it returns, but the k-th largest
    magnitude itself is well defined; take everything above it, then the first indices equal to it.
    """
    n = x.numel()
    if k >= n:
        return torch.arange(n)
    if k == 0:
        return torch.empty(0, dtype=torch.int64)
    a = x.abs()
    threshold = torch.topk(a, k, sorted=False).values.min()
    above = torch.nonzero(a > threshold).flatten()
    ties = torch.nonzero(a == threshold).flatten()[: k - above.numel()]
    return torch.cat([above, ties]).sort().values


def _check_scheme(scheme: str, fraction: float, chunk_size: int) -> None:
    if scheme not in SCHEMES:
        raise CompressionError(f"unknown compression scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    if not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
        raise CompressionError(f"top-k fraction must be in (0, 1], got {fraction!r}")
    if not (isinstance(chunk_size, int) and not isinstance(chunk_size, bool) and 1 <= chunk_size <= MAX_CHUNK_SIZE):
        raise CompressionError(f"chunk_size must be an int in [1, {MAX_CHUNK_SIZE}], got {chunk_size!r}")


def compress(
    delta: Mapping[str, torch.Tensor],
    scheme: str = "topk_int8",
    *,
    fraction: float = 0.1,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Compressed:
    """Compress a pseudo-gradient ``{name: tensor}`` (any float dtype/device; computed in float32).

    Deterministic: the same Δ gives the same :class:`Compressed` (and bytes). A non-finite Δ is
    refused — a diverged local run must not be sent.
    """
    _check_scheme(scheme, fraction, chunk_size)
    out: dict[str, CompressedTensor] = {}
    for name in sorted(delta):
        t = delta[name]
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise CompressionError(f"{name}: expected a floating-point tensor")
        x = t.detach().to("cpu", torch.float32).reshape(-1)
        if not bool(torch.isfinite(x).all()):
            raise CompressionError(f"{name}: pseudo-gradient contains NaN or Inf")
        shape = tuple(t.shape)
        if scheme == "none":
            out[name] = CompressedTensor(shape, x.clone())
        elif scheme == "int8":
            q, s = _quantize(x, chunk_size)
            out[name] = CompressedTensor(shape, q, scales=s)
        elif scheme == "sparseloco":
            codes, offsets, scales = sparseloco.encode(x, fraction, chunk_size)
            out[name] = CompressedTensor(shape, codes, indices=offsets, scales=scales)
        else:
            idx = _topk_indices(x, topk_count(x.numel(), fraction))
            kept = x[idx]
            idx = idx.to(_index_dtype(x.numel()))
            if scheme == "topk":
                out[name] = CompressedTensor(shape, kept.clone(), indices=idx)
            else:
                q, s = _quantize(kept, chunk_size)
                out[name] = CompressedTensor(shape, q, indices=idx, scales=s)
    return Compressed(scheme, out, chunk_size, fraction if scheme == "sparseloco" else None)


def payload_bytes(spec: Mapping[str, tuple[int, ...]], scheme: str, *, fraction: float = 0.1) -> int:
    """The exact serialized size of an honest contribution for parameters ``spec``: it depends only on
    (spec, scheme, fraction), never on the values, so it is also the cap a receiver enforces before
    allocating anything for a peer's bytes."""
    zeros = {n: torch.zeros(s) for n, s in spec.items()}
    return len(compress(zeros, scheme, fraction=fraction).to_bytes())


@dataclass
class Compressed:
    """One miner's compressed pseudo-gradient: ``scheme``, per-parameter payloads, ``chunk_size``."""

    scheme: str
    tensors: dict[str, CompressedTensor]
    chunk_size: int = DEFAULT_CHUNK_SIZE
    fraction: float | None = None  # sparseloco: what each chunk keeps (its layout depends on it)

    def decompress(self) -> dict[str, torch.Tensor]:
        """Dense float32 tensors ``{name: tensor}`` in sorted name order."""
        out = {}
        for name in sorted(self.tensors):
            ct = self.tensors[name]
            if self.scheme == "sparseloco":
                dense = sparseloco.decode(ct.numel, ct.values, ct.indices, ct.scales, self.chunk_size, self.fraction)
                out[name] = dense.reshape(ct.shape)
                continue
            if self.scheme in ("int8", "topk_int8"):
                values = _dequantize(ct.values, ct.scales, self.chunk_size)
            else:
                values = ct.values.to(torch.float32)
            if self.scheme in ("none", "int8"):
                dense = values.clone()
            else:
                dense = torch.zeros(ct.numel, dtype=torch.float32)
                dense[ct.indices.long()] = values
            out[name] = dense.reshape(ct.shape)
        return out

    def to_bytes(self) -> bytes:
        """Canonical bytes (a :mod:`template.engine.checkpoint` state with versioned meta)."""
        flat: dict[str, torch.Tensor] = {}
        for name, ct in self.tensors.items():
            for part in SCHEME_PARTS[self.scheme]:
                flat[f"{name}{_SEP}{part}"] = getattr(ct, part)
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "scheme": self.scheme,
            "chunk_size": self.chunk_size,
            "shapes": {name: list(ct.shape) for name, ct in self.tensors.items()},
        }
        if self.scheme == "sparseloco":
            meta["fraction"] = self.fraction
        return checkpoint.dumps(flat, meta)

    @property
    def nbytes(self) -> int:
        """Size on the wire (length of :meth:`to_bytes`)."""
        return len(self.to_bytes())

    @classmethod
    def from_bytes(
        cls,
        data: bytes | bytearray | memoryview,
        spec: Mapping[str, Sequence[int]],
        *,
        scheme: str | None = None,
        fraction: float | None = None,
        chunk_size: int | None = None,
        max_bytes: int | None = None,
    ) -> Compressed:
        """Parse and validate an untrusted contribution against ``spec`` = ``{name: shape}``.

        Optional expectations (the run's config) are enforced when given: ``scheme``, ``fraction``
        (then every top-k tensor must keep exactly :func:`topk_count` values), ``chunk_size`` and
        ``max_bytes``. Any problem raises :class:`CompressionError`; nothing else escapes.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise CompressionError(f"expected bytes, got {type(data).__name__}")
        if max_bytes is not None and len(data) > max_bytes:
            raise CompressionError(f"contribution is {len(data)} bytes, more than the limit {max_bytes}")
        try:
            flat, meta = checkpoint.loads(data, require_finite=True)
        except checkpoint.CheckpointError as e:
            raise CompressionError(f"malformed contribution: {e}") from None

        if meta.get("format") != FORMAT:
            raise CompressionError(f"not a compressed contribution (format {meta.get('format')!r})")
        fields = {"format", "version", "scheme", "chunk_size", "shapes"}
        if set(meta) != fields | ({"fraction"} if meta.get("scheme") == "sparseloco" else set()):
            raise CompressionError(f"unexpected meta fields {sorted(meta)}")
        if type(meta["version"]) is not int or meta["version"] != VERSION:
            raise CompressionError(f"unsupported contribution version {meta['version']!r} (expected {VERSION})")
        got_scheme, got_chunk = meta["scheme"], meta["chunk_size"]
        if got_scheme not in SCHEMES:
            raise CompressionError(f"unknown scheme {got_scheme!r}")
        if scheme is not None and got_scheme != scheme:
            raise CompressionError(f"scheme {got_scheme!r}, expected {scheme!r}")
        if not (isinstance(got_chunk, int) and not isinstance(got_chunk, bool) and 1 <= got_chunk <= MAX_CHUNK_SIZE):
            raise CompressionError(f"bad chunk_size {got_chunk!r}")
        if chunk_size is not None and got_chunk != chunk_size:
            raise CompressionError(f"chunk_size {got_chunk}, expected {chunk_size}")
        got_fraction = meta.get("fraction")
        if got_scheme == "sparseloco":
            if not (type(got_fraction) in (int, float) and 0 < got_fraction <= 1):
                raise CompressionError(f"bad fraction {got_fraction!r}")
            if fraction is not None and got_fraction != fraction:
                raise CompressionError(f"fraction {got_fraction}, expected {fraction}")

        expected = {str(n): tuple(int(d) for d in s) for n, s in spec.items()}
        shapes = meta["shapes"]
        if not isinstance(shapes, dict):
            raise CompressionError("meta.shapes must be an object")
        if set(shapes) != set(expected):
            missing, extra = sorted(set(expected) - set(shapes)), sorted(set(shapes) - set(expected))
            raise CompressionError(f"parameter names differ from the spec (missing {missing}, unexpected {extra})")
        for name, shape in shapes.items():
            if not isinstance(shape, list) or tuple(shape) != expected[name]:
                raise CompressionError(f"{name}: shape {shape!r}, expected {list(expected[name])}")

        parts = SCHEME_PARTS[got_scheme]
        want_keys = {f"{n}{_SEP}{p}" for n in expected for p in parts}
        if set(flat) != want_keys:
            raise CompressionError(
                f"tensor entries differ from what scheme {got_scheme!r} needs "
                f"(missing {sorted(want_keys - set(flat))[:5]}, unexpected {sorted(set(flat) - want_keys)[:5]})"
            )

        tensors = {}
        for name in sorted(expected):
            shape = expected[name]
            numel = math.prod(shape)
            get = {p: flat[f"{name}{_SEP}{p}"] for p in parts}
            for p, t in get.items():
                if t.dim() != 1:
                    raise CompressionError(f"{name}: {p} must be 1-D, got shape {list(t.shape)}")
            if got_scheme == "sparseloco":
                problem = sparseloco.problem(numel, get, got_chunk, float(got_fraction), MAX_SCALE)
                if problem:
                    raise CompressionError(f"{name}: {problem}")
                tensors[name] = CompressedTensor(shape, get["values"], indices=get["indices"], scales=get["scales"])
                continue
            values = get["values"]
            quantized = got_scheme in ("int8", "topk_int8")
            want_dtype = torch.int8 if quantized else torch.float32
            if values.dtype != want_dtype:
                raise CompressionError(f"{name}: values are {values.dtype}, expected {want_dtype}")

            indices = get.get("indices")
            if indices is None:
                k = numel
            else:
                k = indices.numel()
                if indices.dtype != _index_dtype(numel):
                    raise CompressionError(f"{name}: indices are {indices.dtype}, expected {_index_dtype(numel)}")
                if k > numel:
                    raise CompressionError(f"{name}: {k} indices for {numel} elements")
                if fraction is not None and k != topk_count(numel, fraction):
                    raise CompressionError(f"{name}: {k} values kept, expected {topk_count(numel, fraction)}")
                if k:
                    idx = indices.long()
                    if int(idx[0]) < 0 or int(idx[-1]) >= numel:
                        raise CompressionError(f"{name}: index out of range [0, {numel})")
                    if k > 1 and not bool((idx[1:] > idx[:-1]).all()):
                        raise CompressionError(f"{name}: indices must be strictly increasing")
            if values.numel() != k:
                raise CompressionError(f"{name}: {values.numel()} values, expected {k}")

            scales = get.get("scales")
            if quantized:
                if k and int(values.min()) < -127:
                    raise CompressionError(f"{name}: int8 value -128 is outside the symmetric range")
                if scales.dtype != torch.float32:
                    raise CompressionError(f"{name}: scales are {scales.dtype}, expected float32")
                if scales.numel() != _n_chunks(k, got_chunk):
                    raise CompressionError(f"{name}: {scales.numel()} scales, expected {_n_chunks(k, got_chunk)}")
                # Compared in float64: float32(MAX_SCALE) rounds above MAX_SCALE, and 127 × it is ±inf.
                wide = scales.double()
                if scales.numel() and not bool(((wide >= 0) & (wide <= MAX_SCALE)).all()):
                    raise CompressionError(f"{name}: scales must lie in [0, {MAX_SCALE:.3g}]")
            tensors[name] = CompressedTensor(shape, values, indices=indices, scales=scales)
        return cls(got_scheme, tensors, got_chunk, float(got_fraction) if got_scheme == "sparseloco" else None)


class ErrorFeedback:
    """Error feedback (EF-SGD): remember what compression dropped and send it later.

    Each round: ``corrected = Δ + β·residual``; send ``C(corrected)``; ``residual ← corrected − sent``.
    With β = 1 (the default) ``Σ_t sent_t = Σ_t Δ_t − residual_T`` — nothing is lost, only delayed. For top-k with keep
    ratio δ = k/n, ‖x − C(x)‖ ≤ √(1−δ)·‖x‖, which bounds the residual by
    √(1−δ)/(1−√(1−δ)) · max_t ‖Δ_t‖ (per tensor); for int8 it is at most half a step per element.
    The residual is miner-local state; keep it across rounds of one run, reset it when the global
    state is replaced (e.g. after re-joining from a checkpoint). β < 1 lets what stayed behind for
    long fade, as SparseLoCo's decayed error feedback does: a coordinate sent rarely is sent less stale.
    """

    def __init__(
        self,
        scheme: str = "topk_int8",
        *,
        fraction: float = 0.1,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        decay: float = 1.0,
    ):
        _check_scheme(scheme, fraction, chunk_size)
        if not 0 < decay <= 1:
            raise CompressionError(f"the error feedback's decay must be in (0, 1], got {decay!r}")
        self.scheme, self.fraction, self.chunk_size = scheme, fraction, chunk_size
        self.decay = decay
        self.residual: dict[str, torch.Tensor] = {}

    def compress(self, delta: Mapping[str, torch.Tensor]) -> Compressed:
        if self.residual and set(delta) != set(self.residual):
            raise CompressionError("delta names differ from the residual's (reset() after a model change)")
        corrected = {}
        for name, t in delta.items():
            x = t.detach().to("cpu", torch.float32)
            r = self.residual.get(name)
            if r is not None:
                if r.shape != x.shape:
                    raise CompressionError(f"{name}: shape {list(x.shape)} differs from the residual's {list(r.shape)}")
                x = x + r if self.decay == 1 else x + self.decay * r
            corrected[name] = x
        c = compress(corrected, self.scheme, fraction=self.fraction, chunk_size=self.chunk_size)
        sent = c.decompress()
        self.residual = {name: corrected[name] - sent[name] for name in sorted(corrected)}
        return c

    def reset(self) -> None:
        self.residual = {}

    def state_dict(self) -> dict[str, Any]:
        return {
            "scheme": self.scheme,
            "fraction": self.fraction,
            "chunk_size": self.chunk_size,
            "residual": {k: v.clone() for k, v in self.residual.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        _check_scheme(state["scheme"], state["fraction"], state["chunk_size"])
        self.scheme, self.fraction, self.chunk_size = state["scheme"], state["fraction"], state["chunk_size"]
        self.residual = {k: v.detach().to("cpu", torch.float32).clone() for k, v in state["residual"].items()}
