"""The llama2.c file formats (github.com/karpathy/llama2.c), NumPy only: the legacy float32
checkpoint (run.c), the version-2 int8 checkpoint ("ak42", export.py's version2_export and
runq.c), tokenizer.bin, and random checkpoints of any shape for tests and benchmarks.

Checkpoints are memory-mapped: the arrays returned are read-only views of the file, no copy.
Matrices are row-major [out, in], as in llama2.c (y = W @ x).
"""

from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

BOS, EOS = 1, 2
BYTE_TOKENS = 3  # id of the byte-fallback piece <0x00>; <0xFF> is 258


def _sizes(config: Config) -> tuple[int, ...]:
    """The seven sizes of a file header, in its order (dim ... seq_len)."""
    return tuple(getattr(config, f.name) for f in fields(config)[:7])


@dataclass(frozen=True)
class Config:
    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    seq_len: int
    shared_classifier: bool = True

    def __post_init__(self) -> None:
        if any(size <= 0 for size in _sizes(self)):
            raise ValueError(f"llama2 config: every size must be positive, got {self}")
        if self.dim % self.n_heads or self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"llama2 config: dim ({self.dim}) must be a multiple of n_heads "
                f"({self.n_heads}), and n_heads of n_kv_heads ({self.n_kv_heads})"
            )
        if self.head_size % 2:
            raise ValueError(f"llama2 config: RoPE needs an even head size, got {self.head_size}")

    @property
    def head_size(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_dim(self) -> int:
        return self.head_size * self.n_kv_heads


STORIES15M = Config(
    dim=288, hidden_dim=768, n_layers=6, n_heads=6, n_kv_heads=6, vocab_size=32000, seq_len=256
)
STORIES110M = Config(
    dim=768,
    hidden_dim=2048,
    n_layers=12,
    n_heads=12,
    n_kv_heads=12,
    vocab_size=32000,
    seq_len=1024,
)
# Small enough for tests; GQA (2 query heads per kv head) and a hidden size that is no
# multiple of a vector width, so kernels' tails are exercised.
TINY = Config(
    dim=64, hidden_dim=172, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=300, seq_len=128
)


@dataclass(frozen=True)
class Weights:
    """float32 weights in llama2.c's order and shapes (L = n_layers)."""

    token_embedding: np.ndarray  # [vocab, dim]
    rms_att: np.ndarray  # [L, dim]
    wq: np.ndarray  # [L, dim, dim]
    wk: np.ndarray  # [L, kv_dim, dim]
    wv: np.ndarray  # [L, kv_dim, dim]
    wo: np.ndarray  # [L, dim, dim]
    rms_ffn: np.ndarray  # [L, dim]
    w1: np.ndarray  # [L, hidden, dim]
    w2: np.ndarray  # [L, dim, hidden]
    w3: np.ndarray  # [L, hidden, dim]
    rms_final: np.ndarray  # [dim]
    wcls: np.ndarray  # [vocab, dim]; the token_embedding array itself when shared


def weight_shapes(config: Config) -> dict[str, tuple[int, ...]]:
    """The shape of every Weights field, in the legacy file's order."""
    c, L = config, config.n_layers
    return {
        "token_embedding": (c.vocab_size, c.dim),
        "rms_att": (L, c.dim),
        "wq": (L, c.dim, c.dim),
        "wk": (L, c.kv_dim, c.dim),
        "wv": (L, c.kv_dim, c.dim),
        "wo": (L, c.dim, c.dim),
        "rms_ffn": (L, c.dim),
        "w1": (L, c.hidden_dim, c.dim),
        "w2": (L, c.dim, c.hidden_dim),
        "w3": (L, c.hidden_dim, c.dim),
        "rms_final": (c.dim,),
        "wcls": (c.vocab_size, c.dim),
    }


def rope_tables(config: Config) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin [seq_len, head_size/2] of RoPE's angles pos * 10000^(-2j/head_size),
    computed in float32 as run.c does (powf, then pos * freq)."""
    even = np.arange(0, config.head_size, 2, dtype=np.float32)
    freq = np.float32(1) / np.power(np.float32(10000), even / np.float32(config.head_size))
    angle = np.arange(config.seq_len, dtype=np.float32)[:, None] * freq[None, :]
    return np.cos(angle), np.sin(angle)


def _map(path: str | Path, least: int, what: str) -> np.ndarray:
    """The file as read-only bytes (np.memmap), at least `least` bytes long."""
    size = Path(path).stat().st_size
    if size < least:
        raise ValueError(f"{path}: {size} bytes, too short for a {what} header: truncated?")
    return np.memmap(path, dtype=np.uint8, mode="r")


def _check_size(path: str | Path, data: np.ndarray, expected: int, config: Config) -> None:
    if data.size != expected:
        raise ValueError(
            f"{path}: {data.size} bytes, but its header ({config}) needs {expected}: "
            f"{'truncated' if data.size < expected else 'trailing data or a wrong header'}"
        )


def _f32(data: np.ndarray, offset: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.ndarray(shape, dtype="<f4", buffer=data, offset=offset)


# --- the legacy float32 file (run.c) ---------------------------------------------------------

_LEGACY_HEADER = struct.Struct("<7i")
# the fields before the legacy RoPE tables; wcls, when unshared, follows them
_BEFORE_ROPE = tuple(weight_shapes(STORIES15M))[:-1]


def _legacy_config(path: str | Path, data: np.ndarray) -> Config:
    if bytes(data[:4]) == struct.pack("<I", INT8_MAGIC):
        raise ValueError(f"{path} is a version-2 int8 checkpoint ('ak42'): use read_int8")
    dim, hidden, layers, heads, kv_heads, vocab, seq = _LEGACY_HEADER.unpack(bytes(data[:28]))
    return Config(
        dim, hidden, layers, heads, kv_heads, abs(vocab), seq, shared_classifier=vocab > 0
    )


def read_float32(path: str | Path) -> tuple[Config, Weights]:
    """Read a legacy llama2.c float32 checkpoint, zero copy. Raises ValueError when the file
    is too short, too long, or its header is not a valid config."""
    data = _map(path, _LEGACY_HEADER.size, "llama2.c float32")
    config = _legacy_config(path, data)
    shapes = weight_shapes(config)
    rope_floats = config.seq_len * config.head_size // 2
    floats = sum(math.prod(s) for s in shapes.values()) + 2 * rope_floats
    if config.shared_classifier:
        floats -= math.prod(shapes["wcls"])
    _check_size(path, data, _LEGACY_HEADER.size + 4 * floats, config)
    arrays, offset = {}, _LEGACY_HEADER.size
    for name in _BEFORE_ROPE:
        arrays[name] = _f32(data, offset, shapes[name])
        offset += 4 * math.prod(shapes[name])
    offset += 4 * 2 * rope_floats  # the legacy RoPE tables: run.c recomputes them
    arrays["wcls"] = (
        arrays["token_embedding"]
        if config.shared_classifier
        else _f32(data, offset, shapes["wcls"])
    )
    return config, Weights(**arrays)


def _check_weights(config: Config, weights: Weights) -> None:
    for name, shape in weight_shapes(config).items():
        if getattr(weights, name).shape != shape:
            raise ValueError(
                f"weights.{name} has shape {getattr(weights, name).shape}, {shape} expected"
            )
    shared = weights.wcls is weights.token_embedding
    if config.shared_classifier and not (
        shared or np.array_equal(weights.wcls, weights.token_embedding)
    ):
        raise ValueError("config.shared_classifier is set but weights.wcls != token_embedding")


def _write_f32(file, array: np.ndarray) -> None:
    file.write(np.ascontiguousarray(array, dtype="<f4").tobytes())


def write_float32(path: str | Path, config: Config, weights: Weights) -> None:
    """Write a legacy llama2.c float32 checkpoint (negative vocab size = unshared classifier)."""
    _check_weights(config, weights)
    c = config
    vocab = c.vocab_size if c.shared_classifier else -c.vocab_size
    with open(path, "wb") as f:
        f.write(_LEGACY_HEADER.pack(*_sizes(c)[:5], vocab, c.seq_len))
        for name in _BEFORE_ROPE:
            _write_f32(f, getattr(weights, name))
        for table in rope_tables(config):
            _write_f32(f, table)
        if not c.shared_classifier:
            _write_f32(f, weights.wcls)


# --- the version-2 int8 file (export.py version2_export, runq.c) ---------------------------

INT8_MAGIC = 0x616B3432  # "ak42" read as a little-endian uint32
INT8_VERSION = 2
INT8_HEADER_BYTES = 256
_INT8_HEADER = struct.Struct("<Ii7iBi")  # magic, version, config, shared byte, group size
_QUANTIZED = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")  # file order, after the embedding


@dataclass(frozen=True)
class QuantizedTensor:
    """Symmetric int8 values with one float32 scale per group of consecutive values along the
    last axis: value ≈ q * s[..., i // group_size]."""

    q: np.ndarray  # int8 [..., n]
    s: np.ndarray  # float32 [..., n // group_size]

    @property
    def group_size(self) -> int:
        return self.q.shape[-1] // self.s.shape[-1]

    def __getitem__(self, index: int | slice) -> QuantizedTensor:
        """Index the leading axes of both arrays: qweights.wq[layer]."""
        return QuantizedTensor(self.q[index], self.s[index])


@dataclass(frozen=True)
class QWeights:
    """A version-2 file's weights: rms weights in float32, every matrix a QuantizedTensor
    stacked over layers (wq.q is [L, dim, dim], wq.s [L, dim, dim/group]; wq[l] is layer l).
    Read from a file they are strided views into it: each layer's int8 values are followed
    by its scales there."""

    group_size: int
    token_embedding: QuantizedTensor  # [vocab, dim]
    rms_att: np.ndarray  # [L, dim]
    rms_ffn: np.ndarray  # [L, dim]
    rms_final: np.ndarray  # [dim]
    wq: QuantizedTensor
    wk: QuantizedTensor
    wv: QuantizedTensor
    wo: QuantizedTensor
    w1: QuantizedTensor
    w2: QuantizedTensor
    w3: QuantizedTensor
    wcls: QuantizedTensor  # the token_embedding itself when the classifier is shared


def quantize_int8(x: np.ndarray, group_size: int, rounding: str = "even") -> QuantizedTensor:
    """Quantize groups of `group_size` consecutive values along the last axis: scale =
    max|x| / 127 and q = round(x / scale), in float32. rounding="even" rounds halves to even
    (torch.round, as export.py quantizes weights); "away" rounds them away from zero (C's
    round, as runq.c quantizes activations). An all-zero group gets scale 0 and q 0."""
    x = np.asarray(x, dtype=np.float32)
    if x.shape[-1] % group_size:
        raise ValueError(
            f"last axis {x.shape[-1]} is not a multiple of the group size {group_size}"
        )
    groups = x.reshape(*x.shape[:-1], x.shape[-1] // group_size, group_size)
    scale = np.abs(groups).max(axis=-1) / np.float32(127)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = groups / scale[..., None]
    if rounding == "even":
        q = np.round(ratio)
    elif rounding == "away":
        q = np.trunc(ratio.astype(np.float64) + np.copysign(0.5, ratio))  # exact in float64
    else:
        raise ValueError(f"rounding must be 'even' or 'away', got {rounding!r}")
    q = np.nan_to_num(q, nan=0.0).astype(np.int8).reshape(x.shape)
    return QuantizedTensor(q, scale)


def dequantize_int8(qt: QuantizedTensor) -> np.ndarray:
    """float32 q * scale, as runq.c's dequantize."""
    g = qt.group_size
    groups = qt.q.reshape(*qt.q.shape[:-1], -1, g).astype(np.float32) * qt.s[..., None]
    return groups.reshape(qt.q.shape)


def int8_group_size(config: Config, requested: int = 64) -> int:
    """The group size a version-2 file of this config gets: `requested`, halved until it
    divides dim and hidden_dim. (export.py checks only dim; runq.c also needs hidden_dim,
    the length of w2's rows, else it drops their tails.)"""
    group = requested
    while config.dim % group or config.hidden_dim % group:
        group //= 2
    return group


def quantize_weights(config: Config, weights: Weights, group_size: int = 64) -> QWeights:
    """Quantize float32 weights as export.py's version2_export does (group size backed off
    by int8_group_size)."""
    _check_weights(config, weights)
    group = int8_group_size(config, group_size)
    matrices = {name: quantize_int8(getattr(weights, name), group) for name in _QUANTIZED}
    embedding = quantize_int8(weights.token_embedding, group)
    wcls = embedding if config.shared_classifier else quantize_int8(weights.wcls, group)
    norms = [
        np.asarray(n, np.float32) for n in (weights.rms_att, weights.rms_ffn, weights.rms_final)
    ]
    return QWeights(group, embedding, *norms, **matrices, wcls=wcls)


def _int8_config(path: str | Path, data: np.ndarray) -> tuple[Config, int]:
    magic, version, *sizes, shared, group = _INT8_HEADER.unpack(bytes(data[: _INT8_HEADER.size]))
    if magic != INT8_MAGIC:
        raise ValueError(f"{path}: bad magic {magic:#010x}, not a version-2 llama2.c file ('ak42')")
    if version != INT8_VERSION:
        raise ValueError(f"{path}: version {version}, only version {INT8_VERSION} (int8) is read")
    config = Config(*sizes, shared_classifier=bool(shared))
    if group <= 0 or config.dim % group or config.hidden_dim % group:
        raise ValueError(
            f"{path}: group size {group} does not divide dim and hidden_dim ({config})"
        )
    return config, group


def _quantized_shapes(config: Config) -> dict[str, tuple[int, int, int]]:
    """(count, rows, columns) of each quantized tensor, in file order."""
    shapes = weight_shapes(config)
    stacked = {name: shapes[name] for name in _QUANTIZED}
    tensors = {"token_embedding": (1, *shapes["token_embedding"]), **stacked}
    if not config.shared_classifier:
        tensors["wcls"] = (1, *shapes["wcls"])
    return tensors


def _quantized_view(data: np.ndarray, offset: int, shape: tuple[int, int, int], group: int):
    """A stacked QuantizedTensor viewing `count` (values, scales) blocks at `offset`, and
    the offset after them."""
    count, rows, cols = shape
    values, scales = rows * cols, rows * cols // group
    block = values + 4 * scales
    q = np.ndarray(shape, np.int8, buffer=data, offset=offset, strides=(block, cols, 1))
    s_shape = (count, rows, cols // group)
    s = np.ndarray(
        s_shape, "<f4", buffer=data, offset=offset + values, strides=(block, 4 * cols // group, 4)
    )
    return QuantizedTensor(q, s), offset + count * block


def read_int8(path: str | Path) -> tuple[Config, QWeights]:
    """Read a version-2 int8 checkpoint, zero copy. Raises ValueError for a bad magic or
    version, a group size that does not divide the rows, or a file of the wrong length."""
    data = _map(path, INT8_HEADER_BYTES, "version-2 llama2.c")
    config, group = _int8_config(path, data)
    c, L = config, config.n_layers
    tensors = _quantized_shapes(config)
    norms_bytes = 4 * (2 * L * c.dim + c.dim)
    tensor_bytes = sum(n * r * k + 4 * (n * r * k // group) for n, r, k in tensors.values())
    _check_size(path, data, INT8_HEADER_BYTES + norms_bytes + tensor_bytes, config)
    offset = INT8_HEADER_BYTES
    rms_att = _f32(data, offset, (L, c.dim))
    rms_ffn = _f32(data, offset + 4 * L * c.dim, (L, c.dim))
    rms_final = _f32(data, offset + 8 * L * c.dim, (c.dim,))
    offset += norms_bytes
    views = {}
    for name, shape in tensors.items():
        views[name], offset = _quantized_view(data, offset, shape, group)
    embedding = views.pop("token_embedding")[0]
    wcls = views.pop("wcls")[0] if "wcls" in views else embedding
    return config, QWeights(group, embedding, rms_att, rms_ffn, rms_final, **views, wcls=wcls)


def write_qweights(path: str | Path, config: Config, qweights: QWeights) -> None:
    """Write a version-2 int8 checkpoint of already quantized weights."""
    c, qw = config, qweights
    shared = int(c.shared_classifier)
    header = _INT8_HEADER.pack(INT8_MAGIC, INT8_VERSION, *_sizes(c), shared, qw.group_size)
    with open(path, "wb") as f:
        f.write(header.ljust(INT8_HEADER_BYTES, b"\0"))
        for norm in (qw.rms_att, qw.rms_ffn, qw.rms_final):
            _write_f32(f, norm)
        for name in _quantized_shapes(config):
            stacked = getattr(qw, name)
            for layer in stacked if stacked.q.ndim == 3 else [stacked]:
                f.write(np.ascontiguousarray(layer.q, dtype=np.int8).tobytes())
                _write_f32(f, layer.s)


def write_int8(path: str | Path, config: Config, weights: Weights, group_size: int = 64) -> None:
    """Quantize float32 weights and write them as a version-2 int8 checkpoint."""
    write_qweights(path, config, quantize_weights(config, weights, group_size))


def read_checkpoint(path: str | Path) -> tuple[Config, Weights | QWeights]:
    """Read either format, told apart by the version-2 magic."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head == struct.pack("<I", INT8_MAGIC):
        return read_int8(path)
    return read_float32(path)


# --- tokenizer.bin ----------------------------------------------------------------------------

_BYTE_PIECE = re.compile(rb"<0x([0-9A-Fa-f]{2})>")


class Tokenizer:
    """llama2.c's byte-pair tokenizer: pieces (bytes) and their merge scores."""

    def __init__(
        self, pieces: list[bytes], scores: list[float], max_token_length: int | None = None
    ):
        if len(pieces) != len(scores):
            raise ValueError(f"{len(pieces)} pieces but {len(scores)} scores")
        self.pieces = list(pieces)
        self.scores = [float(np.float32(s)) for s in scores]
        self.max_token_length = max_token_length or max(len(p) for p in self.pieces)
        self._ids: dict[bytes, int] = {}
        for i, piece in enumerate(self.pieces):
            self._ids.setdefault(piece, i)

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    @classmethod
    def read(cls, path: str | Path, max_pieces: int | None = None) -> Tokenizer:
        """Read a tokenizer.bin: int32 max_token_length, then per piece a float32 score, an
        int32 length and the bytes, to the end of the file or `max_pieces` pieces (the file
        does not say how many it holds: run.c reads the model's vocab_size)."""
        data = Path(path).read_bytes()
        if len(data) < 4:
            raise ValueError(f"{path}: {len(data)} bytes, too short for a tokenizer.bin")
        (max_len,) = struct.unpack_from("<i", data)
        pieces, scores, offset = [], [], 4
        while offset < len(data) and (max_pieces is None or len(pieces) < max_pieces):
            if offset + 8 > len(data):
                raise ValueError(f"{path}: truncated in piece {len(pieces)}")
            score, length = struct.unpack_from("<fi", data, offset)
            offset += 8
            if length < 0 or offset + length > len(data):
                raise ValueError(f"{path}: truncated in piece {len(pieces)} (length {length})")
            pieces.append(data[offset : offset + length])
            scores.append(score)
            offset += length
        return cls(pieces, scores, max_len)

    def write(self, path: str | Path) -> None:
        with open(path, "wb") as f:
            f.write(struct.pack("<i", self.max_token_length))
            for piece, score in zip(self.pieces, self.scores):
                f.write(struct.pack("<fi", score, len(piece)) + piece)

    def encode(self, text: str | bytes, bos: bool = True, eos: bool = False) -> list[int]:
        """llama2.c's encode: BOS, a dummy-prefix " " (non-empty text only), one token per
        UTF-8 codepoint found in the vocabulary (else one byte-fallback token per byte), then
        merge the adjacent pair whose concatenation scores best until no pair is a piece."""
        data = text.encode() if isinstance(text, str) else text
        tokens = [BOS] if bos else []
        if data:
            if b" " not in self._ids:
                raise ValueError("the tokenizer has no ' ' piece for the dummy prefix")
            tokens.append(self._ids[b" "])
        tokens += self._codepoint_tokens(data)
        self._merge(tokens)
        return tokens + [EOS] if eos else tokens

    def _codepoint_tokens(self, data: bytes) -> list[int]:
        tokens: list[int] = []
        start = 0
        for end in range(1, len(data) + 1):
            # a codepoint ends before a byte that is not a continuation (10xxxxxx), or at 4 bytes
            continues = end < len(data) and data[end] & 0xC0 == 0x80
            if continues and end - start < 4:
                continue
            chunk = data[start:end]
            if chunk in self._ids:
                tokens.append(self._ids[chunk])
            else:
                tokens += [BYTE_TOKENS + b for b in chunk]
            start = end
        return tokens

    def _merge(self, tokens: list[int]) -> None:
        while True:
            best_score, best_at, best_id = -1e10, -1, -1
            for i in range(len(tokens) - 1):
                merged = self._ids.get(self.pieces[tokens[i]] + self.pieces[tokens[i + 1]])
                if merged is not None and self.scores[merged] > best_score:
                    best_score, best_at, best_id = self.scores[merged], i, merged
            if best_at < 0:
                return
            tokens[best_at : best_at + 2] = [best_id]

    def decode_piece(self, prev_token: int, token: int) -> bytes:
        """The bytes `token` stands for after `prev_token`, as llama2.c's decode: a leading
        space is dropped after BOS, and a byte-fallback piece <0xXX> is the raw byte."""
        piece = self.pieces[token]
        if prev_token == BOS and piece.startswith(b" "):
            piece = piece[1:]
        byte = _BYTE_PIECE.fullmatch(piece)
        return bytes([int(byte.group(1), 16)]) if byte else piece


# --- random checkpoints -----------------------------------------------------------------------

_SPECIAL_PIECES = [b"<unk>", b"\n<s>\n", b"\n</s>\n"]
# Single-codepoint pieces by rough frequency: a small vocabulary keeps the first ones, and
# codepoints left out (and the multibyte ones) take the byte fallback.
_ALPHABET = (
    " etaoinshrdlcumwfgypbvkjxqzETAOINSHRDLCUMWFGYPBVKJXQZ.,'\"!?;:-()0123456789\n"
    "éèàüöñßçø€中文字日本語"
)
_MAX_MERGED_BYTES = 16


def random_tokenizer(vocab_size: int, seed: int) -> Tokenizer:
    """A tokenizer.bin-shaped vocabulary: <unk>, <s>, </s>; the 256 byte pieces; about two
    thirds of the rest single codepoints (" " first); then unique merges of two earlier
    pieces, earlier merges scoring higher, so that encode merges as a BPE vocabulary does."""
    free = vocab_size - len(_SPECIAL_PIECES) - 256
    if free < 1:
        raise ValueError(f"vocab_size {vocab_size}: at least 260 (specials, bytes and ' ')")
    rng = np.random.default_rng(seed)
    chars = [c.encode() for c in _ALPHABET[: max(1, min(len(_ALPHABET), free * 2 // 3))]]
    merged: list[bytes] = []
    known = set(chars)
    while len(chars) + len(merged) < free:
        pool = chars + merged
        # favour early (frequent) pieces, as real merges do
        a, b = (pool[int(len(pool) * rng.random() ** 2)] for _ in range(2))
        if len(a + b) <= _MAX_MERGED_BYTES and a + b not in known:
            known.add(a + b)
            merged.append(a + b)
    pieces = _SPECIAL_PIECES + [b"<0x%02X>" % i for i in range(256)] + chars + merged
    scores = [0.0] * 259 + [-float(len(merged) + i) for i in range(len(chars))]
    scores += [-float(i) for i in range(len(merged))]
    return Tokenizer(pieces, scores)


_BRANCH_GAIN = 2.0
_EMBED_STD = 0.1


def random_model(config: Config, seed: int) -> Weights:
    """Random float32 weights that make a lively model: matrices N(0, 1/fan_in) so every
    projection keeps unit scale, the residual branches' outputs (wo, w2) larger than the
    embedding so a token's logits depend on its context rather than mostly on itself, and
    rms weights near 1."""
    rng = np.random.default_rng(seed)

    def normal(shape: tuple[int, ...], std: float) -> np.ndarray:
        a = rng.standard_normal(shape, dtype=np.float32)
        a *= np.float32(std)
        return a

    arrays = {}
    for name, shape in weight_shapes(config).items():
        if name.startswith("rms"):
            arrays[name] = 1 + normal(shape, 0.1)
        elif name in ("token_embedding", "wcls"):
            arrays[name] = normal(shape, _EMBED_STD)
        else:
            gain = _BRANCH_GAIN if name in ("wo", "w2") else 1.0
            arrays[name] = normal(shape, gain / math.sqrt(shape[-1]))
    if config.shared_classifier:
        arrays["wcls"] = arrays["token_embedding"]
    return Weights(**arrays)


def write_checkpoint(
    directory: str | Path, config: Config, seed: int, kinds: tuple[str, ...] = ("float32", "int8")
) -> dict[str, Path]:
    """Write a random model (as "model_float32.bin" and/or "model_int8.bin") and a random
    tokenizer ("tokenizer.bin") into `directory`; returns their paths by kind ("tokenizer")."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = random_model(config, seed)
    writers = {"float32": write_float32, "int8": write_int8}
    paths = {"tokenizer": directory / "tokenizer.bin"}
    random_tokenizer(config.vocab_size, seed).write(paths["tokenizer"])
    for kind in kinds:
        if kind not in writers:
            raise ValueError(f"unknown checkpoint kind {kind!r}: 'float32' or 'int8'")
        paths[kind] = directory / f"model_{kind}.bin"
        writers[kind](paths[kind], config, weights)
    return paths
