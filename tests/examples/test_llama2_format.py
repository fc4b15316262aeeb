"""llama2.c's file formats: float32 and version-2 int8 checkpoints, tokenizer.bin."""

from __future__ import annotations

import dataclasses
import struct

import numpy as np
import pytest
from kdsl.examples import llama2_format as fmt

UNSHARED = dataclasses.replace(fmt.TINY, shared_classifier=False)


@pytest.fixture(scope="module")
def weights() -> fmt.Weights:
    return fmt.random_model(fmt.TINY, seed=3)


def _fields(weights) -> dict[str, np.ndarray]:
    return {f.name: getattr(weights, f.name) for f in dataclasses.fields(weights)}


@pytest.mark.parametrize("config", [fmt.TINY, UNSHARED], ids=["shared", "unshared"])
def test_float32_round_trip_is_bit_exact(tmp_path, config):
    weights = fmt.random_model(config, seed=5)
    fmt.write_float32(tmp_path / "a.bin", config, weights)
    read_config, read = fmt.read_float32(tmp_path / "a.bin")
    assert read_config == config
    for name, array in _fields(weights).items():
        assert np.array_equal(getattr(read, name), array), name
    assert (read.wcls is read.token_embedding) == config.shared_classifier
    assert isinstance(read.wq.base, np.memmap) and not read.wq.flags.writeable  # zero copy
    fmt.write_float32(tmp_path / "b.bin", config, read)
    assert (tmp_path / "a.bin").read_bytes() == (tmp_path / "b.bin").read_bytes()


def test_float32_layout_header_and_rope_tables(tmp_path):
    c = UNSHARED
    fmt.write_float32(tmp_path / "m.bin", c, fmt.random_model(c, seed=1))
    data = (tmp_path / "m.bin").read_bytes()
    assert struct.unpack_from("<7i", data) == (64, 172, 2, 4, 2, -300, 128)  # -: unshared
    before_rope = 7 + sum(np.prod(s) for s in list(fmt.weight_shapes(c).values())[:-1])
    half = c.head_size // 2
    tables = np.frombuffer(data, "<f4", 2 * c.seq_len * half, 4 * before_rope)
    angle = np.arange(c.seq_len)[:, None] * 10000.0 ** (-np.arange(0, c.head_size, 2) / c.head_size)
    np.testing.assert_allclose(tables[: c.seq_len * half], np.cos(angle).ravel(), atol=1e-4)
    np.testing.assert_allclose(tables[c.seq_len * half :], np.sin(angle).ravel(), atol=1e-4)


def test_int8_round_trip_is_bit_exact(tmp_path, weights):
    fmt.write_int8(tmp_path / "a.bin", fmt.TINY, weights, group_size=64)
    config, q = fmt.read_int8(tmp_path / "a.bin")
    assert config == fmt.TINY
    assert q.group_size == 4  # 64 backed off to divide hidden_dim 172
    assert q.wq.q.shape == (2, 64, 64) and q.w2.s.shape == (2, 64, 43)
    assert q.wcls is q.token_embedding
    assert isinstance(q.wq.q.base, np.memmap)  # zero copy
    fmt.write_qweights(tmp_path / "b.bin", config, q)
    assert (tmp_path / "a.bin").read_bytes() == (tmp_path / "b.bin").read_bytes()


def test_int8_layout_follows_export_py(tmp_path, weights):
    """Header fields at their byte offsets; rms weights; then per tensor and layer the int8
    values and their scales, the embedding first and wcls last when unshared."""
    c = UNSHARED
    w = fmt.random_model(c, seed=2)
    fmt.write_int8(tmp_path / "m.bin", c, w, group_size=4)
    data = (tmp_path / "m.bin").read_bytes()
    assert struct.unpack_from("<Ii7iBi", data) == (0x616B3432, 2, 64, 172, 2, 4, 2, 300, 128, 0, 4)
    assert data[:4] == b"24ka" and data[41:256] == bytes(215)
    rms = np.frombuffer(data, "<f4", 2 * 2 * 64 + 64, 256)
    assert np.array_equal(rms, np.concatenate([w.rms_att.ravel(), w.rms_ffn.ravel(), w.rms_final]))
    offset = 256 + 4 * rms.size
    order = [w.token_embedding, *w.wq, *w.wk, *w.wv, *w.wo, *w.w1, *w.w2, *w.w3, w.wcls]
    for matrix in order:
        expected = fmt.quantize_int8(matrix, 4)
        q = np.frombuffer(data, np.int8, matrix.size, offset)
        s = np.frombuffer(data, "<f4", matrix.size // 4, offset + matrix.size)
        assert np.array_equal(q, expected.q.ravel()) and np.array_equal(s, expected.s.ravel())
        offset += matrix.size * 2  # 1 byte per value + 4 bytes per 4 values
    assert offset == len(data)


def test_quantize_int8_rule():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 128), dtype=np.float32)
    qt = fmt.quantize_int8(w, 64)
    groups = w.reshape(8, 2, 64)
    scale = np.abs(groups).max(axis=-1) / np.float32(127)
    assert np.array_equal(qt.s, scale)
    assert np.array_equal(
        qt.q.reshape(8, 2, 64), np.round(groups / scale[..., None]).astype(np.int8)
    )
    assert np.all(np.abs(qt.q.reshape(8, 2, 64)).max(axis=-1) == 127)
    error = np.abs(fmt.dequantize_int8(qt) - w).reshape(8, 2, 64)
    assert np.all(error <= scale[..., None] * 0.5001)


def test_quantize_int8_rounding_of_halves():
    x = np.array([254, 1, 3, -1, 5, -5, 0, 2], np.float32)  # scale 2: ratios end in .5
    assert fmt.quantize_int8(x, 8).q.tolist() == [127, 0, 2, 0, 2, -2, 0, 1]
    assert fmt.quantize_int8(x, 8, rounding="away").q.tolist() == [127, 1, 2, -1, 3, -3, 0, 1]
    zeros = fmt.quantize_int8(np.zeros(4, np.float32), 4)
    assert zeros.q.tolist() == [0, 0, 0, 0] and zeros.s.tolist() == [0.0]


def test_int8_group_size_backs_off_to_divide_rows():
    assert fmt.int8_group_size(fmt.STORIES110M) == 64
    assert fmt.int8_group_size(fmt.STORIES15M) == 32  # dim 288
    assert fmt.int8_group_size(fmt.TINY) == 4  # hidden 172


def _truncations(path) -> list[bytes]:
    data = path.read_bytes()
    return [b"", data[:10], data[:255], data[: len(data) // 2], data[:-1], data + b"\0"]


@pytest.mark.parametrize("kind", ["float32", "int8"])
def test_truncated_or_padded_files_raise_value_error(tmp_path, weights, kind):
    write, read = (
        (fmt.write_float32, fmt.read_float32)
        if kind == "float32"
        else (fmt.write_int8, fmt.read_int8)
    )
    write(tmp_path / "good.bin", fmt.TINY, weights)
    for i, data in enumerate(_truncations(tmp_path / "good.bin")):
        (tmp_path / f"bad{i}.bin").write_bytes(data)
        with pytest.raises(ValueError, match="bytes"):
            read(tmp_path / f"bad{i}.bin")


def test_bad_magic_version_or_group_raise_value_error(tmp_path, weights):
    fmt.write_int8(tmp_path / "good.bin", fmt.TINY, weights)
    good = (tmp_path / "good.bin").read_bytes()
    for name, patch, message in [
        ("magic", (0, b"ak43"), "bad magic"),
        ("version", (4, struct.pack("<i", 1)), "version 1"),
        ("group", (37, struct.pack("<i", 64)), "group size 64"),
        ("config", (8, struct.pack("<i", -64)), "positive"),
    ]:
        at, replacement = patch
        (tmp_path / name).write_bytes(good[:at] + replacement + good[at + len(replacement) :])
        with pytest.raises(ValueError, match=message):
            fmt.read_int8(tmp_path / name)
    with pytest.raises(ValueError, match="use read_int8"):
        fmt.read_float32(tmp_path / "good.bin")


def test_read_checkpoint_tells_the_formats_apart(tmp_path, weights):
    fmt.write_float32(tmp_path / "f.bin", fmt.TINY, weights)
    fmt.write_int8(tmp_path / "q.bin", fmt.TINY, weights)
    assert isinstance(fmt.read_checkpoint(tmp_path / "f.bin")[1], fmt.Weights)
    assert isinstance(fmt.read_checkpoint(tmp_path / "q.bin")[1], fmt.QWeights)


# --- tokenizer --------------------------------------------------------------------------------


def _small_tokenizer() -> fmt.Tokenizer:
    extra = [b" ", b"a", b"b", b"c", b"\xc3\xa9", b"ab", b" a", b" ab", b"bc"]  # é: one piece
    scores = [0.0] * 5 + [-1.0, -2.0, -3.0, -0.5]
    pieces = [b"<unk>", b"\n<s>\n", b"\n</s>\n"] + [b"<0x%02X>" % i for i in range(256)]
    return fmt.Tokenizer(pieces + extra, [0.0] * 259 + scores)


def test_encode_merges_best_pair_first_and_falls_back_to_bytes():
    tok = _small_tokenizer()
    space, b, e_acute, space_a, space_ab, bc = 259, 261, 263, 265, 266, 267
    # " abc ab": bc (best score) first, then ab, " a" and " ab"
    assert tok.encode("abc ab") == [1, space_a, bc, space_ab]
    assert tok.encode("ab") == [1, space_ab]
    # "é" is a piece, "ü" (C3 BC) is not
    assert tok.encode("é ü", eos=True) == [1, space, e_acute, space, 0xC3 + 3, 0xBC + 3, 2]
    assert tok.encode("b", bos=False) == [space, b] and tok.encode("") == [1]
    assert tok.decode_piece(1, space_ab) == b"ab" and tok.decode_piece(5, space_ab) == b" ab"
    assert tok.decode_piece(7, 0xC3 + 3) == b"\xc3"


def test_tokenizer_file_round_trip(tmp_path):
    tok = fmt.random_tokenizer(1000, seed=4)
    tok.write(tmp_path / "t.bin")
    read = fmt.Tokenizer.read(tmp_path / "t.bin")
    assert read.pieces == tok.pieces and read.scores == tok.scores
    assert read.max_token_length == tok.max_token_length
    read.write(tmp_path / "u.bin")
    assert (tmp_path / "t.bin").read_bytes() == (tmp_path / "u.bin").read_bytes()
    (tmp_path / "short.bin").write_bytes((tmp_path / "t.bin").read_bytes()[:-3])
    with pytest.raises(ValueError, match="truncated"):
        fmt.Tokenizer.read(tmp_path / "short.bin")


def test_tokenizer_read_stops_after_max_pieces(tmp_path):
    """As run.c's build_tokenizer, which reads the model's vocab_size pieces: the rest of
    the file is not read (here a truncated piece)."""
    tok = fmt.random_tokenizer(400, seed=2)
    tok.write(tmp_path / "t.bin")
    (tmp_path / "short.bin").write_bytes((tmp_path / "t.bin").read_bytes()[:-3])
    read = fmt.Tokenizer.read(tmp_path / "short.bin", max_pieces=300)
    assert read.pieces == tok.pieces[:300] and read.scores == tok.scores[:300]
    assert read.max_token_length == tok.max_token_length
    assert fmt.Tokenizer.read(tmp_path / "t.bin", max_pieces=500).vocab_size == 400


def test_random_tokenizer_encodes_and_decodes_multibyte_text():
    tok = fmt.random_tokenizer(2000, seed=1)
    assert tok.vocab_size == 2000 and len(set(tok.pieces)) == 2000
    assert tok.pieces[3] == b"<0x00>" and tok.pieces[258] == b"<0xFF>" and b" " in tok.pieces
    first_merge = tok.pieces.index(b" ") + sum(len(p.decode()) == 1 for p in tok.pieces[259:])
    text = "The little cat sat; il était une fois — 中文 🙂 " + tok.pieces[1500].decode()
    tokens = tok.encode(text)
    assert max(tokens) >= first_merge  # merges happened
    assert 0xF0 + 3 in tokens  # 🙂 took the byte fallback
    decoded = b"".join(tok.decode_piece(p, t) for p, t in zip(tokens, tokens[1:]))
    assert decoded.decode() == text


def test_random_model_and_checkpoint(tmp_path):
    w = fmt.random_model(fmt.TINY, seed=7)
    assert np.array_equal(w.w2, fmt.random_model(fmt.TINY, seed=7).w2)
    assert w.wcls is w.token_embedding and w.w2.dtype == np.float32
    assert 0.5 < w.rms_att.mean() < 1.5 and np.count_nonzero(w.wq) == w.wq.size
    paths = fmt.write_checkpoint(tmp_path, fmt.TINY, seed=7)
    assert set(paths) == {"float32", "int8", "tokenizer"}
    assert np.array_equal(fmt.read_float32(paths["float32"])[1].w1, w.w1)
    assert fmt.Tokenizer.read(paths["tokenizer"]).vocab_size == fmt.TINY.vocab_size
