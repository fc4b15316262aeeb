"""The kdsl llama2 runner (examples/llama2.py) against the NumPy reference forward:
logits to 1e-4 relative and the same greedy tokens for 64+ steps, for the float32 file,
the version-2 int8 file and both GGML re-quantizations; and its command line."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from kdsl.examples import llama2 as runner
from kdsl.examples import llama2_format as fmt
from kdsl.examples import llama2_reference as ref
from kdsl.kernels import quant

from kdsl.cli import main as kdsl_main
from tests.helpers import random_array, run_config

STEPS = 72
# TINY's hidden size (172) is no multiple of GGML's 32-value blocks; this one is.
BLOCKED = dataclasses.replace(fmt.TINY, hidden_dim=160)
# no size a multiple of a vector (heads of 14), five query heads to one kv head
ODD = fmt.Config(
    dim=70, hidden_dim=101, n_layers=2, n_heads=5, n_kv_heads=1, vocab_size=263, seq_len=80
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    return fmt.write_checkpoint(tmp_path_factory.mktemp("tiny"), fmt.TINY, seed=3)


@pytest.fixture(scope="module")
def blocked(tmp_path_factory) -> dict[str, Path]:
    return fmt.write_checkpoint(
        tmp_path_factory.mktemp("blocked"), BLOCKED, seed=4, kinds=("float32",)
    )


@pytest.mark.parametrize("rows", [1, 9, 37])
@pytest.mark.parametrize("size", [4, 64])
@pytest.mark.parametrize("tile", [8, 4, 1])
@pytest.mark.parametrize("biased", [True, False])
def test_int8_group_kernel(rows: int, size: int, tile: int, biased: bool) -> None:
    """llama2.c's int8 rows (a float32 scale per group of `size`) against NumPy, in
    either form of the byte products (quant.signed_bytes_dot), weights of -128 included."""
    rng = np.random.default_rng(rows + size + tile)
    groups = 3
    q = rng.integers(-128, 128, (rows, groups * size), dtype=np.int8)
    xq = rng.integers(-127, 128, groups * size, dtype=np.int8)
    s, xs = rng.random((rows, groups), np.float32), rng.random(groups, np.float32)
    dots = (q.astype(np.int64) * xq).reshape(rows, groups, size).sum(axis=2)
    want = (dots * s.astype(np.float64) * xs).sum(axis=1)
    y = random_array(rng, (rows,), np.float32)
    run_config(runner.int8_groups(size), {"rows": tile}, q, s, xq, xs, y, biased)
    # the integer dots are exact; their f32 sum over groups may cancel to a small row
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())


def _dequantized(kind: str, args: tuple[np.ndarray, ...], n: int) -> tuple[np.ndarray, ...]:
    """The values a QuantizedInput's product arguments stand for, and each one's scale."""
    if kind == "int8":
        xq, xs = args
        return (xq.reshape(len(xs), -1) * xs[:, None]).reshape(-1), np.repeat(xs, n // len(xs))
    d = args[0][0, : n // 32].astype(np.float32)
    width = 32 if kind == "q8_0" else 16  # a block's quants in each array
    q = np.concatenate([a.reshape(-1, width)[: n // 32] for a in args[1:]], axis=1)
    return (q * d[:, None]).reshape(-1), np.repeat(d, 32)


@pytest.mark.parametrize("kind", ["int8", "q8_0", "q4_0"])
def test_inputs_are_made_and_quantized_in_one_call(kind: str) -> None:
    """A quantized input from a vector, from rmsnorm after adding the pending residual
    (which it then clears), or from SwiGLU: each value within half a step of its scale
    (and the f16 scale's rounding) of NumPy's."""
    rng = np.random.default_rng(5)
    n = 96
    x, r, w = (rng.standard_normal(n).astype(np.float32) for _ in range(3))
    h13 = rng.standard_normal(2 * n).astype(np.float32)
    inputs = runner.int8_input(32, n) if kind == "int8" else runner.ggml_input(kind, n)
    summed = x + r
    normed = w * summed / np.sqrt(np.mean(summed.astype(np.float64) ** 2) + runner.EPS)
    gated = h13[:n] / (1 + np.exp(-h13[:n].astype(np.float64))) * h13[n:]
    for make, want in (
        (lambda: inputs(x), x.copy()),
        (lambda: inputs.normed(x, r, w), normed),
        (lambda: inputs.gated(h13), gated),
    ):
        got, step = _dequantized(kind, make(), n)  # (each call reuses the buffers)
        assert np.all(np.abs(got - want) <= 0.6 * step + 1e-6)
    assert np.array_equal(x, summed) and not r.any()


class _GgmlMatrices:
    """The reference's matrices re-quantized to a GGML format, with GGML's arithmetic
    (activations quantized to Q8_0 per block): quant.reference_qmatmul in float64."""

    def __init__(self, weights: fmt.Weights, fmt_name: str):
        self.weights, self.format = weights, fmt_name

    def embed(self, token: int) -> np.ndarray:
        return np.array(self.weights.token_embedding[token], np.float32)

    def linear(self, name: str, layer: int | None, x: np.ndarray) -> np.ndarray:
        w = getattr(self.weights, name)
        w = w if layer is None else w[layer]
        return quant.reference_qmatmul(quant.reference_quantize(w, self.format), x)[0].astype(
            np.float32
        )


def _reference(config, weights, quant_format=None) -> ref.Transformer:
    model = ref.Transformer(config, weights)
    if quant_format is not None:
        model.matrices = _GgmlMatrices(weights, quant_format)
    return model


def _agree(config, weights, quant_format=None) -> list[float]:
    """Greedy decoding from BOS: the same tokens for every step; returns each step's
    largest logit difference relative to the largest logit."""
    expected = _reference(config, weights, quant_format)
    kdsl = runner.Transformer(config, weights, quant_format)
    token, errors = fmt.BOS, []
    for pos in range(STEPS):
        want = expected.forward(token, pos)
        got = kdsl.forward(token, pos)
        errors.append(float(np.abs(got - want).max() / np.abs(want).max()))
        assert int(np.argmax(got)) == int(np.argmax(want)), f"greedy tokens differ at {pos}"
        token = int(np.argmax(want))
    return errors


def _within(errors: list[float], quantized: bool) -> None:
    """float32: every step within 1e-4. Quantized activations: within 1e-4 until a sum
    that differs from NumPy's in its last bit (another summation order) rounds an
    activation to the neighbouring integer, as C's runq and NumPy also do now and
    then; from there the cache carries a difference of about one quantum (< 2%)."""
    if not quantized:
        assert max(errors) < 1e-4, errors
        return
    first = next((pos for pos, e in enumerate(errors) if e >= 1e-4), len(errors))
    assert first >= 8, errors
    assert max(errors) < 2e-2, errors


@pytest.mark.parametrize("kind", ["float32", "int8"])
def test_llama2_c_files(tiny, kind: str) -> None:
    _within(_agree(*fmt.read_checkpoint(tiny[kind])), quantized=kind == "int8")


def test_float32_layers_of_odd_sizes(tmp_path) -> None:
    """The float32 forward kernel (one call a token) with sizes that are no multiple of
    its vectors, grouped-query attention and a cache filled to 72 positions of 80."""
    path = fmt.write_checkpoint(tmp_path, ODD, seed=6, kinds=("float32",))["float32"]
    _within(_agree(*fmt.read_checkpoint(path)), quantized=False)


@pytest.mark.parametrize("quant_format", ["q8_0", "q4_0"])
def test_requantized_to_ggml(blocked, quant_format: str) -> None:
    _within(_agree(*fmt.read_checkpoint(blocked["float32"]), quant_format), quantized=True)


@pytest.mark.parametrize("kind", ["float32", "int8", "q4_0"])
def test_matrices_are_copied_out_of_the_memory_mapped_file(tiny, blocked, kind: str) -> None:
    """Every matrix a token streams is a copy in a HugePageArena (the file's pages are
    4 KiB) holding the file's values."""
    path = tiny["int8"] if kind == "int8" else (blocked if kind == "q4_0" else tiny)["float32"]
    config, weights = fmt.read_checkpoint(path)
    model = runner.Transformer(config, weights, "q4_0" if kind == "q4_0" else None)
    file = np.memmap(path, np.uint8, mode="r")
    if kind == "float32":  # one kernel call a token: each array stacked by layer
        arrays = [*model.model.weights, model.model.rms_final, model.model.wcls]
        assert not any(np.shares_memory(a, file) for a in arrays)
        np.testing.assert_array_equal(model.model.weights[2][1], weights.wo[1])
        np.testing.assert_array_equal(model.model.wcls, weights.wcls)
        return
    layers = model.model.layers
    linears = [model.model.classifier] + [
        getattr(layer, name) for layer in layers for name in ("qkv", "wo", "w13", "w2")
    ]
    for linear in linears:
        arrays = [a for a in vars(linear).values() if isinstance(a, np.ndarray)]
        assert arrays and not any(np.shares_memory(a, file) for a in arrays)
    wo = layers[1].wo
    if kind == "int8":
        np.testing.assert_array_equal(wo.q, weights.wo.q[1])
        np.testing.assert_array_equal(wo.s, weights.wo.s[1])
    else:
        np.testing.assert_array_equal(wo.q, quant.quantize(weights.wo[1], "q4_0").q)


def test_the_command_line_prints_text_and_speed(tiny, capsys) -> None:
    argv = [str(tiny["float32"]), "-z", str(tiny["tokenizer"]), "-t", "0", "-n", "40", "-i", "the"]
    assert runner.main(argv) == 0
    out, err = capsys.readouterr()
    config, weights = fmt.read_checkpoint(tiny["float32"])
    tokenizer = fmt.Tokenizer.read(tiny["tokenizer"])
    sampler = ref.Sampler(config.vocab_size, 0.0, 0.9, 1)
    _, text = ref.generate(ref.Transformer(config, weights), tokenizer, sampler, "the", 40)
    assert out == text + "\n"
    assert err.startswith("achieved tok/s: ")
    assert float(err.split(":")[1]) > 0


def test_sampling_matches_the_reference_with_a_seed(tiny, capsys) -> None:
    argv = [str(tiny["int8"]), "-z", str(tiny["tokenizer"]), "-t", "0.8", "-p", "0.9"]
    assert kdsl_main(["llama2", *argv, "-s", "7", "-n", "30"]) == 0
    out = capsys.readouterr().out
    config, weights = fmt.read_checkpoint(tiny["int8"])
    sampler = ref.Sampler(config.vocab_size, 0.8, 0.9, 7)
    tokenizer = fmt.Tokenizer.read(tiny["tokenizer"])
    _, text = ref.generate(ref.Transformer(config, weights), tokenizer, sampler, "", 30)
    assert out == text + "\n"


def test_bad_input_is_an_error_message_not_a_crash(tiny, tmp_path, capsys) -> None:
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"ak42" + b"\0" * 10)
    assert runner.main([str(bad), "-z", str(tiny["tokenizer"])]) == 1
    assert "llama2: error:" in capsys.readouterr().err


def _error(argv: list[str], capsys) -> str:
    """What `kdsl llama2 ...` prints for an input it refuses: one line, exit status 1."""
    assert kdsl_main(["llama2", *argv]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "Traceback" not in err
    return err


def test_quant_of_dimensions_that_are_not_whole_blocks_is_an_error(tiny, capsys) -> None:
    argv = [str(tiny["float32"]), "-z", str(tiny["tokenizer"]), "--quant", "q4_0"]
    assert _error(argv, capsys) == (
        "kdsl llama2: error: --quant q4_0 stores rows in blocks of 32 values, but the rows of "
        "w2 have hidden_dim = 172: --quant needs model dimensions (dim, hidden_dim) that are "
        "multiples of 32, and this model's are (64, 172); run without --quant\n"
    )
    narrow = dataclasses.replace(BLOCKED, dim=48, n_heads=2, n_kv_heads=1)
    paths = fmt.write_checkpoint(tiny["float32"].parent / "narrow", narrow, 6, ("float32",))
    argv = [str(paths["float32"]), "-z", str(paths["tokenizer"]), "--quant", "q8_0"]
    assert "the rows of wq, wk, wv, wo, w1, w3 and wcls have dim = 48" in _error(argv, capsys)


def test_a_tokenizer_with_fewer_pieces_than_the_vocabulary_is_an_error(tiny, tmp_path, capsys):
    """As llama2.c, which reads vocab_size pieces; the model would sample tokens that have
    no piece (an IndexError in decoding, before)."""
    big = dataclasses.replace(fmt.TINY, vocab_size=512)
    model = fmt.write_checkpoint(tmp_path, big, seed=5, kinds=("float32",))["float32"]
    assert _error([str(model), "-z", str(tiny["tokenizer"]), "-n", "64"], capsys) == (
        f"kdsl llama2: error: {tiny['tokenizer']} has 300 pieces but the checkpoint's "
        "vocab_size is 512: pass the tokenizer made for this model with -z\n"
    )


def test_a_tokenizer_with_more_pieces_is_read_to_the_vocabulary(tiny, tmp_path, capsys):
    """As llama2.c, the first vocab_size pieces; the others are not tokens of the model
    (a prompt merged into one, the model's embedding had no row for it, before)."""
    tokenizer = fmt.Tokenizer.read(tiny["tokenizer"])
    prompt = "the"
    first, second = tokenizer.encode(prompt)[1:3]
    extra = [tokenizer.pieces[first] + tokenizer.pieces[second]]  # merged first if read
    extra += [b"<extra %d>" % i for i in range(511 - fmt.TINY.vocab_size)]
    bigger = fmt.Tokenizer(tokenizer.pieces + extra, tokenizer.scores + [1e9] * len(extra))
    bigger.write(tmp_path / "bigger.bin")
    argv = [str(tiny["float32"]), "-t", "0", "-n", "24", "-i", prompt]
    assert runner.main([*argv, "-z", str(tmp_path / "bigger.bin")]) == 0
    with_more = capsys.readouterr().out
    assert runner.main([*argv, "-z", str(tiny["tokenizer"])]) == 0
    assert with_more == capsys.readouterr().out


@pytest.mark.parametrize(
    "given, taken",
    [
        (["-t", "-1"], ["-t", "0"]),  # a negative temperature is greedy
        (["-p", "1.5"], ["-p", "0.9"]),  # a top-p outside [0, 1] is 0.9
        (["-p", "-0.5"], ["-p", "0.9"]),
        (["-n", "-3"], ["-n", "0"]),  # steps below 1 are seq_len
        (["-n", "1000"], ["-n", "128"]),  # and so are steps past it
    ],
)
def test_options_out_of_range_are_taken_as_run_c_takes_them(tiny, capsys, given, taken):
    argv = [str(tiny["float32"]), "-z", str(tiny["tokenizer"]), "-s", "5", "-i", "the"]
    texts = []
    for options in (given, taken):
        assert runner.main([*argv, *options]) == 0
        texts.append(capsys.readouterr().out)
    assert texts[0] == texts[1]


def test_a_nan_option_is_an_error(tiny, capsys) -> None:
    argv = [str(tiny["float32"]), "-z", str(tiny["tokenizer"]), "-t", "nan"]
    assert _error(argv, capsys) == "kdsl llama2: error: the temperature is NaN: pass a number\n"
