"""The NumPy reference of llama2.c: the transformer forward of run.c (float32 weights) and
runq.c (version-2 int8 weights), the sampler, and the generate loop. It is the definition
that kdsl's llama2 runner and the C baselines (benchmarks/llama2_c) are checked against.

The math is float32, step by step as in the C code (same operations, same roundings of the
int8 path); only the summation order of dot products differs (BLAS), so logits agree with C
to float32 rounding, not bit for bit. `python -m kdsl.examples.llama2_reference CHECKPOINT`
runs it with llama2.c's options.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
from kdsl.examples.llama2_format import (
    BOS,
    Config,
    QuantizedTensor,
    QWeights,
    Tokenizer,
    Weights,
    dequantize_int8,
    quantize_int8,
    read_checkpoint,
    rope_tables,
)

F32 = np.float32
_MATRICES = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")


def rmsnorm(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """weight * x / sqrt(mean(x²) + 1e-5), in float32 as run.c."""
    inv_rms = F32(1) / np.sqrt(np.dot(x, x) / F32(x.size) + F32(1e-5))
    return weight * (inv_rms * x)


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax along the last axis, max subtracted first."""
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


class _Float32Matrices:
    """run.c's matmuls: y = W @ x in float32."""

    def __init__(self, weights: Weights):
        self.weights = weights

    def embed(self, token: int) -> np.ndarray:
        return np.array(self.weights.token_embedding[token], dtype=F32)

    def linear(self, name: str, layer: int | None, x: np.ndarray) -> np.ndarray:
        w = getattr(self.weights, name)
        return (w if layer is None else w[layer]) @ x


class _Int8Matrices:
    """runq.c's matmuls: x quantized per group (C's round), then per row and group the exact
    integer dot product times the weight's scale times x's scale, summed over groups in
    order. The integer dot products run as float32 BLAS on the int8 values, exact because
    every partial sum stays below 2**24; the weights are kept that way, group-major
    ([groups, rows, group_size]), which costs 4 bytes per weight of memory."""

    def __init__(self, qweights: QWeights):
        group = qweights.group_size
        if group * 127 * 127 >= 2**24:
            raise ValueError(f"group size {group}: float32 group sums would not be exact")
        self.group = group
        self.embedding = qweights.token_embedding
        self.matrices = {name: self._grouped(getattr(qweights, name)) for name in _MATRICES}
        q, s = self._grouped(qweights.wcls[None])
        self.matrices["wcls"] = q[0], s[0]

    def _grouped(self, qt: QuantizedTensor) -> tuple[np.ndarray, np.ndarray]:
        layers, rows, cols = qt.q.shape
        q = qt.q.reshape(layers, rows, cols // self.group, self.group).transpose(0, 2, 1, 3)
        return np.ascontiguousarray(q, dtype=F32), np.ascontiguousarray(qt.s.transpose(0, 2, 1))

    def embed(self, token: int) -> np.ndarray:
        return dequantize_int8(self.embedding[token])

    def linear(self, name: str, layer: int | None, x: np.ndarray) -> np.ndarray:
        q, s = self.matrices[name]
        if layer is not None:
            q, s = q[layer], s[layer]  # [groups, rows, group_size], [groups, rows]
        xq = quantize_int8(x, self.group, rounding="away")
        xq_groups = xq.q.reshape(-1, self.group, 1).astype(F32)
        dots = np.matmul(q, xq_groups)[..., 0]  # [groups, rows], exact integers
        return (dots * s * xq.s[:, None]).sum(axis=0, dtype=F32)


class Transformer:
    """llama2.c's Llama-2 forward for one token at a time, with a KV cache
    [n_layers, seq_len, kv_dim]. float32 weights run as run.c, QWeights as runq.c."""

    def __init__(self, config: Config, weights: Weights | QWeights):
        self.config = config
        quantized = isinstance(weights, QWeights)
        self.matrices = _Int8Matrices(weights) if quantized else _Float32Matrices(weights)
        self.rms_att, self.rms_ffn = weights.rms_att, weights.rms_ffn
        self.rms_final = weights.rms_final
        self.rope_cos, self.rope_sin = rope_tables(config)
        cache_shape = (config.n_layers, config.seq_len, config.kv_dim)
        self.key_cache = np.zeros(cache_shape, F32)
        self.value_cache = np.zeros(cache_shape, F32)

    def forward(self, token: int, pos: int) -> np.ndarray:
        """The logits [vocab_size] (float32) after `token` at position `pos`; positions
        0..pos-1 must have been run before (their keys and values are in the cache)."""
        x = self.matrices.embed(token)
        for layer in range(self.config.n_layers):
            x = x + self._attention(layer, rmsnorm(x, self.rms_att[layer]), pos)
            x = x + self._ffn(layer, rmsnorm(x, self.rms_ffn[layer]))
        return self.matrices.linear("wcls", None, rmsnorm(x, self.rms_final))

    def _attention(self, layer: int, xb: np.ndarray, pos: int) -> np.ndarray:
        c, linear = self.config, self.matrices.linear
        q = self._rope(linear("wq", layer, xb), pos)
        self.key_cache[layer, pos] = self._rope(linear("wk", layer, xb), pos)
        self.value_cache[layer, pos] = linear("wv", layer, xb)
        # GQA: query heads h*kv_mul .. h*kv_mul+kv_mul-1 share kv head h
        heads = q.reshape(c.n_kv_heads, c.n_heads // c.n_kv_heads, c.head_size)
        keys = self.key_cache[layer, : pos + 1].reshape(pos + 1, c.n_kv_heads, c.head_size)
        values = self.value_cache[layer, : pos + 1].reshape(pos + 1, c.n_kv_heads, c.head_size)
        scores = np.matmul(heads, keys.transpose(1, 2, 0)) / np.sqrt(F32(c.head_size))
        out = np.matmul(softmax(scores), values.transpose(1, 0, 2))
        return linear("wo", layer, out.reshape(c.dim))

    def _rope(self, vec: np.ndarray, pos: int) -> np.ndarray:
        """Rotate each pair (2j, 2j+1) of every head by pos * 10000^(-2j/head_size)."""
        pairs = vec.reshape(-1, self.config.head_size // 2, 2)
        v0, v1 = pairs[..., 0], pairs[..., 1]
        cos, sin = self.rope_cos[pos], self.rope_sin[pos]
        return np.stack([v0 * cos - v1 * sin, v0 * sin + v1 * cos], axis=-1).reshape(vec.shape)

    def _ffn(self, layer: int, xb: np.ndarray) -> np.ndarray:
        """SwiGLU: w2 @ (silu(w1 @ x) * (w3 @ x))."""
        h1 = self.matrices.linear("w1", layer, xb)
        h3 = self.matrices.linear("w3", layer, xb)
        with np.errstate(over="ignore"):  # exp(-h1) = inf gives silu = -0, as in C
            hidden = h1 * (F32(1) / (F32(1) + np.exp(-h1))) * h3
        return self.matrices.linear("w2", layer, hidden)


class Sampler:
    """llama2.c's sampler: greedy at temperature 0, else a draw from softmax(logits / t),
    from the top-p nucleus when 0 < topp < 1, with llama2.c's xorshift generator, so a seed
    draws the same tokens as C from the same logits.

    The options are taken as run.c's main takes them: a temperature below 0 is 0 (greedy),
    a top-p outside [0, 1] is 0.9, and the seed is C's unsigned 64-bit value (-1 is
    2**64 - 1), 0 meaning the clock's seconds. NaN is a ValueError (C's sampling is
    undefined there)."""

    _MASK = (1 << 64) - 1

    def __init__(self, vocab_size: int, temperature: float, topp: float, seed: int):
        for name, value in (("temperature", temperature), ("top-p", topp)):
            if math.isnan(value):
                raise ValueError(f"the {name} is NaN: pass a number")
        self.vocab_size = vocab_size
        self.temperature = F32(max(temperature, 0.0))
        self.topp = F32(topp if 0 <= topp <= 1 else 0.9)
        self.state = seed & self._MASK or int(time.time()) & 0xFFFFFFFF

    def random_u32(self) -> int:
        """xorshift* (Marsaglia; Vigna's multiplier), the top 32 bits of the product."""
        s = self.state
        s ^= s >> 12
        s ^= (s << 25) & self._MASK
        s ^= s >> 27
        self.state = s
        return ((s * 0x2545F4914F6CDD1D) & self._MASK) >> 32

    def random_f32(self) -> np.float32:
        """A float32 in [0, 1) from the top 24 bits."""
        return F32((self.random_u32() >> 8) / 16777216.0)

    def sample(self, logits: np.ndarray) -> int:
        if self.temperature == 0:
            return int(np.argmax(logits))
        scaled = np.asarray(logits, F32) / self.temperature
        e = np.exp(scaled - scaled.max())
        probs = e / np.cumsum(e)[-1]  # C's sum, in order
        coin = self.random_f32()
        if 0 < self.topp < 1:
            return self._sample_topp(probs, coin)
        return _first_above(np.cumsum(probs), coin, len(probs) - 1)

    def _sample_topp(self, probs: np.ndarray, coin: np.float32) -> int:
        """Draw from the most likely tokens whose probabilities first sum past topp."""
        cutoff = (F32(1) - self.topp) / F32(len(probs) - 1)
        candidates = np.flatnonzero(probs >= cutoff)  # the others cannot be in the nucleus
        order = candidates[np.argsort(-probs[candidates], kind="stable")]
        cumulative = np.cumsum(probs[order])
        last = _first_above(cumulative, self.topp, len(order) - 1)
        return int(order[_first_above(cumulative[: last + 1], coin * cumulative[last], last)])


def _first_above(cdf: np.ndarray, value: np.float32, otherwise: int) -> int:
    """The first index whose cdf exceeds `value`, or `otherwise` (rounding left it short)."""
    index = int(np.searchsorted(cdf, value, side="right"))
    return index if index < len(cdf) else otherwise


def safe_piece(piece: bytes) -> bytes:
    """llama2.c's safe_printf: a lone byte is printed only if printable or whitespace."""
    if len(piece) == 1 and not (0x20 <= piece[0] < 0x7F or piece[0] in b" \t\n\v\f\r"):
        return b""
    return piece


def generate(
    transformer: Transformer, tokenizer: Tokenizer, sampler: Sampler, prompt: str, steps: int
) -> tuple[list[int], str]:
    """llama2.c's generate loop: the prompt's tokens are forced, then each next token is
    sampled; stops after `steps` positions (0 or less, or more than seq_len: seq_len, as
    run.c) or at BOS.
    Returns all tokens from the prompt's BOS on, and the text printed, as llama2.c prints."""
    steps = transformer.config.seq_len if not 0 < steps <= transformer.config.seq_len else steps
    prompt_tokens = tokenizer.encode(prompt, bos=True)
    tokens, text = prompt_tokens[:1], []
    for pos in range(steps):
        logits = transformer.forward(tokens[-1], pos)
        if pos + 1 < len(prompt_tokens):
            next_token = prompt_tokens[pos + 1]
        else:
            next_token = sampler.sample(logits)
        if next_token == BOS:
            break
        text.append(safe_piece(tokenizer.decode_piece(tokens[-1], next_token)))
        tokens.append(next_token)
    return tokens, b"".join(text).decode("utf-8", errors="replace")


def read_tokenizer(path: str | Path, vocab_size: int) -> Tokenizer:
    """The tokenizer of a model of `vocab_size` tokens, read as run.c's build_tokenizer
    reads it: the file's first vocab_size pieces (a longer file's others are not read). A
    file with fewer is a ValueError: the model would sample tokens it has no piece for."""
    tokenizer = Tokenizer.read(path, max_pieces=vocab_size)
    if tokenizer.vocab_size < vocab_size:
        raise ValueError(
            f"{path} has {tokenizer.vocab_size} pieces but the checkpoint's vocab_size is "
            f"{vocab_size}: pass the tokenizer made for this model with -z"
        )
    return tokenizer


# llama2.c's options: flag, type, default, metavar, help (run.c's rules for values out of
# range are Sampler's and generate's)
_OPTIONS = (
    ("-t", float, 1.0, "TEMP", "temperature (default 1.0); 0 or below: greedy"),
    ("-p", float, 0.9, "TOPP", "top-p (default 0.9); 1: off; outside [0, 1]: 0.9"),
    ("-s", int, 0, "SEED", "random seed (default 0: the time)"),
    ("-n", int, 256, "STEPS", "steps (default 256); below 1 or past seq_len: seq_len"),
    ("-i", str, "", "PROMPT", "prompt (default: none)"),
    ("-z", str, "tokenizer.bin", "TOKENIZER", "the model's tokenizer (default tokenizer.bin)"),
)


def add_options(parser: argparse.ArgumentParser) -> None:
    """The checkpoint and llama2.c's options, -t -p -s -n -i -z."""
    parser.add_argument(
        "checkpoint", help="llama2.c checkpoint: legacy float32 or version-2 int8 ('ak42')"
    )
    for flag, kind, default, metavar, text in _OPTIONS:
        parser.add_argument(flag, type=kind, default=default, metavar=metavar, help=text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_options(parser)
    args = parser.parse_args(argv)
    try:
        config, weights = read_checkpoint(args.checkpoint)
        tokenizer = read_tokenizer(args.z, config.vocab_size)
        sampler = Sampler(config.vocab_size, args.t, args.p, args.s)
        transformer = Transformer(config, weights)
    except (OSError, ValueError) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 1
    start = time.perf_counter()
    tokens, text = generate(transformer, tokenizer, sampler, args.i, args.n)
    elapsed = time.perf_counter() - start
    print(text)
    print(f"achieved tok/s: {(len(tokens) - 1) / elapsed:f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
