"""The NumPy reference forward of llama2.c, its sampler and generate loop, and the C
baselines (benchmarks/llama2_c) against it."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from kdsl.examples import llama2_format as fmt
from kdsl.examples import llama2_reference as ref

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "the cat é 中 🙂"  # codepoints in the vocabulary, byte fallbacks, merges


def _load_c_build():
    spec = importlib.util.spec_from_file_location(
        "llama2_c_build", ROOT / "benchmarks" / "llama2_c" / "build.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> dict[str, Path]:
    return fmt.write_checkpoint(tmp_path_factory.mktemp("tiny"), fmt.TINY, seed=1)


def _float64_prefill(config: fmt.Config, w: fmt.Weights, tokens: list[int]) -> np.ndarray:
    """All positions' logits at once, causal attention without a cache, in float64: an
    independent statement of the same model."""
    c, n = config, len(tokens)
    f64 = {f.name: np.asarray(getattr(w, f.name), np.float64) for f in dataclasses.fields(w)}

    def norm(x, weight):
        return weight * x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-5)

    def rope(x, heads):
        x = x.reshape(n, heads, c.head_size // 2, 2)
        j = np.arange(c.head_size // 2)
        angle = np.arange(n)[:, None, None] * 10000.0 ** (-2 * j / c.head_size)
        rotated = x[..., 0] * np.exp(1j * angle) + 1j * x[..., 1] * np.exp(1j * angle)
        return np.stack([rotated.real, rotated.imag], -1).reshape(n, heads, c.head_size)

    x = f64["token_embedding"][tokens]
    for layer in range(c.n_layers):
        h = norm(x, f64["rms_att"][layer])
        q = rope(h @ f64["wq"][layer].T, c.n_heads)
        k = rope(h @ f64["wk"][layer].T, c.n_kv_heads)
        v = (h @ f64["wv"][layer].T).reshape(n, c.n_kv_heads, c.head_size)
        group = c.n_heads // c.n_kv_heads
        k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
        scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(c.head_size)
        scores[:, np.triu(np.ones((n, n), bool), 1)] = -np.inf
        att = np.exp(scores - scores.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        x = x + np.einsum("hqk,khd->qhd", att, v).reshape(n, c.dim) @ f64["wo"][layer].T
        h = norm(x, f64["rms_ffn"][layer])
        gate = h @ f64["w1"][layer].T
        x = x + (gate / (1 + np.exp(-gate)) * (h @ f64["w3"][layer].T)) @ f64["w2"][layer].T
    return norm(x, f64["rms_final"]) @ f64["wcls"].T


CONFIGS = {
    "gqa": fmt.TINY,
    "mha-unshared": dataclasses.replace(fmt.TINY, n_kv_heads=4, shared_classifier=False),
}


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_incremental_forward_equals_recomputing_every_position(config):
    weights = fmt.random_model(config, seed=2)
    tokens = list(np.random.default_rng(0).integers(0, config.vocab_size, 40))
    model = ref.Transformer(config, weights)
    logits = np.array([model.forward(t, pos) for pos, t in enumerate(tokens)])
    assert logits.dtype == np.float32
    expected = _float64_prefill(config, weights, tokens)
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_forward_is_deterministic():
    weights = fmt.quantize_weights(fmt.TINY, fmt.random_model(fmt.TINY, seed=4))
    runs = [[ref.Transformer(fmt.TINY, weights).forward(t, p) for p, t in enumerate([5, 9, 7])]]
    runs.append([ref.Transformer(fmt.TINY, weights).forward(t, p) for p, t in enumerate([5, 9, 7])])
    assert all(np.array_equal(a, b) for a, b in zip(*runs))


def test_int8_matmul_follows_runq():
    """Per row: sum over groups, in order, of (integer dot * weight scale) * input scale."""
    w = fmt.random_model(fmt.TINY, seed=5)
    q = fmt.quantize_weights(fmt.TINY, w, group_size=4)
    x = np.random.default_rng(1).standard_normal(fmt.TINY.hidden_dim, dtype=np.float32)
    got = ref.Transformer(fmt.TINY, q).matrices.linear("w2", 1, x)
    xq = fmt.quantize_int8(x, 4, rounding="away")
    wq = q.w2[1]
    expected = np.zeros(fmt.TINY.dim, np.float32)
    for g in range(fmt.TINY.hidden_dim // 4):
        dots = wq.q[:, 4 * g : 4 * g + 4].astype(np.int32) @ xq.q[4 * g : 4 * g + 4]
        expected += dots.astype(np.float32) * wq.s[:, g] * xq.s[g]
    assert np.array_equal(got, expected)
    dense = w.w2[1] @ x
    np.testing.assert_allclose(got, dense, atol=0.05 * np.abs(dense).max())


def test_random_u32_and_f32_match_llama2c():
    sampler = ref.Sampler(10, 1.0, 0.9, seed=42)
    assert [sampler.random_u32() for _ in range(4)] == [
        1456360119,
        3359763283,
        3393612768,
        4054632243,
    ]  # llama2.c's random_u32, seed 42
    sampler = ref.Sampler(10, 1.0, 0.9, seed=1234567)
    assert [sampler.random_f32() for _ in range(2)] == [
        np.float32(0.824366093),
        np.float32(0.640456557),
    ]


def test_sampler_greedy_multinomial_and_nucleus():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], np.float32))
    assert ref.Sampler(4, 0.0, 0.9, seed=1).sample(logits) == 0
    full = ref.Sampler(4, 1.0, 1.0, seed=1)
    counts = np.bincount([full.sample(logits) for _ in range(4000)], minlength=4) / 4000
    np.testing.assert_allclose(counts, [0.5, 0.3, 0.15, 0.05], atol=0.03)
    nucleus = ref.Sampler(4, 1.0, 0.7, seed=1)  # 0.5 + 0.3 passes 0.7
    assert set(nucleus.sample(logits) for _ in range(300)) == {0, 1}


def test_sampler_takes_options_as_run_c_takes_them(monkeypatch):
    """run.c's main: a temperature below 0 is 0, a top-p outside [0, 1] is 0.9, the seed is
    an unsigned 64-bit integer (-1 is 2**64 - 1) and 0 is the clock's seconds."""
    monkeypatch.setattr(ref.time, "time", lambda: 1700000000.75)
    logits = np.log(np.array([0.1, 0.6, 0.3], np.float32))
    assert all(ref.Sampler(3, -1.0, 0.9, seed=1).sample(logits) == 1 for _ in range(50))
    topps = [ref.Sampler(3, 1.0, p, seed=1).topp for p in (1.5, -0.5, 1.0, 0.0)]
    assert topps == [np.float32(0.9), np.float32(0.9), 1, 0]
    seeds = [ref.Sampler(3, 1.0, 0.9, seed=s).state for s in (0, -1, 2**64, 7)]
    assert seeds == [1700000000, 2**64 - 1, 1700000000, 7]
    for temperature, topp in ((float("nan"), 0.9), (1.0, float("nan"))):
        with pytest.raises(ValueError, match="is NaN: pass a number"):
            ref.Sampler(3, temperature, topp, seed=1)


class _Scripted:
    """A transformer stub whose logits pick a scripted token at each position."""

    def __init__(self, config, script):
        self.config, self.script = config, script

    def forward(self, token, pos):
        logits = np.zeros(self.config.vocab_size, np.float32)
        logits[self.script[pos]] = 1.0
        return logits


def test_generate_forces_the_prompt_and_stops_at_bos():
    tok = fmt.random_tokenizer(fmt.TINY.vocab_size, seed=1)
    prompt = tok.encode("the")
    script = [0] * (len(prompt) - 1) + [ord("a") + 3, 0xC3 + 3, ord("b") + 3, 1, 5]
    tokens, text = ref.generate(
        _Scripted(fmt.TINY, script), tok, ref.Sampler(300, 0.0, 0.9, 1), "the", 0
    )
    assert tokens == prompt + script[len(prompt) - 1 : -2]
    assert text == "theab"  # the lone byte 0xC3 is not printed, as in llama2.c


def test_generate_on_a_checkpoint(checkpoint):
    config, weights = fmt.read_float32(checkpoint["float32"])
    tok = fmt.Tokenizer.read(checkpoint["tokenizer"])
    tokens, text = ref.generate(
        ref.Transformer(config, weights), tok, ref.Sampler(300, 0.0, 0.9, 1), PROMPT, 80
    )
    assert tokens[: len(tok.encode(PROMPT))] == tok.encode(PROMPT) and len(tokens) == 81
    # é, 中 and 🙂 took the byte fallback: lone bytes >= 0x80 are not printed, as in llama2.c
    assert text.startswith("the cat   ") and len(set(tokens)) > 10


@pytest.fixture(scope="module")
def c_build():
    build = _load_c_build()
    if not build.compiler_available():
        pytest.skip("needs gcc with OpenMP")
    return build


@pytest.mark.parametrize(
    "kind, temperature", [("float32", 0.0), ("int8", 0.0), ("float32", 0.8), ("int8", 0.8)]
)
def test_c_baseline_generates_the_reference_tokens(c_build, checkpoint, kind, temperature):
    config, weights = fmt.read_checkpoint(checkpoint[kind])
    tok = fmt.Tokenizer.read(checkpoint["tokenizer"])
    sampler = ref.Sampler(config.vocab_size, temperature, 0.9, seed=7)
    expected = ref.generate(ref.Transformer(config, weights), tok, sampler, PROMPT, 100)
    program = "run" if kind == "float32" else "runq"
    got = c_build.run_c(
        program,
        checkpoint[kind],
        checkpoint["tokenizer"],
        steps=100,
        temperature=temperature,
        seed=7,
        prompt=PROMPT,
        threads=2,
    )
    assert len(expected[0]) == 101  # the prompt and at least 64 generated tokens
    assert got.tokens == expected[0] and got.text == expected[1]
    assert got.tok_per_s > 0


@pytest.mark.parametrize("kind", ["float32", "int8"])
def test_c_baseline_with_an_unshared_classifier(c_build, tmp_path, kind):
    config = CONFIGS["mha-unshared"]
    paths = fmt.write_checkpoint(tmp_path, config, seed=3, kinds=(kind,))
    _, weights = fmt.read_checkpoint(paths[kind])
    tok = fmt.Tokenizer.read(paths["tokenizer"])
    sampler = ref.Sampler(config.vocab_size, 0.0, 0.9, seed=1)
    tokens, _ = ref.generate(ref.Transformer(config, weights), tok, sampler, "", 40)
    program = "run" if kind == "float32" else "runq"
    assert c_build.run_c(program, paths[kind], paths["tokenizer"], steps=40).tokens == tokens


def test_reference_command_line(checkpoint, tmp_path, capsys):
    argv = [str(checkpoint["int8"]), "-n", "12", "-i", "the"]
    assert ref.main([*argv, "-z", str(checkpoint["tokenizer"])]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("the") and "achieved tok/s:" in err
    fmt.random_tokenizer(280, seed=1).write(tmp_path / "small.bin")
    assert ref.main([*argv, "-z", str(tmp_path / "small.bin")]) == 1
    assert "small.bin has 280 pieces but the checkpoint's vocab_size is 300" in (
        capsys.readouterr().err
    )


def test_c_baseline_rejects_a_truncated_checkpoint(c_build, checkpoint, tmp_path):
    (tmp_path / "short.bin").write_bytes(checkpoint["int8"].read_bytes()[:-8])
    with pytest.raises(RuntimeError, match="header implies"):
        c_build.run_c("runq", tmp_path / "short.bin", checkpoint["tokenizer"], steps=4)
