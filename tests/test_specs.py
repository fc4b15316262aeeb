"""Example-argument specs: the text form, kd.spec, and the random arrays made from them."""

import numpy as np
import pytest

import kdsl as kd
from kdsl import types as T
from kdsl.errors import KdslError
from kdsl.specs import Spec, SpecError, make_arguments, parse_args_spec, spec


def test_parse_arrays_and_scalars_in_order():
    got = parse_args_spec("A=512x256:f32,B=256x128:bf16,C=512x128:f32,eps=1e-5,n=7")
    assert list(got) == ["A", "B", "C", "eps", "n"]
    assert got["A"] == Spec((512, 256), T.f32)
    assert got["B"] == Spec((256, 128), T.bf16)
    assert got["eps"] == 1e-5 and type(got["eps"]) is float
    assert got["n"] == 7 and type(got["n"]) is int


@pytest.mark.parametrize(
    "text, expected",
    [
        ("s=:f64", Spec((), T.f64)),
        ("v=7:i8", Spec((7,), T.i8)),
        ("m=0x3:u8", Spec((0, 3), T.u8)),
        ("flags=2x2x2:bool_", Spec((2, 2, 2), T.bool_)),
        (" k = -3 ", -3),
        ("scale=0.5", 0.5),
        ("big=inf", float("inf")),
        ("causal=True", True),
        ("causal=False", False),
    ],
)
def test_parse_one_item(text, expected):
    (value,) = parse_args_spec(text).values()
    assert value == expected and type(value) is type(expected)


def test_whitespace_and_empty_text():
    assert parse_args_spec(" A = 4 x 2 : f32 , n = 3 ") == {"A": Spec((4, 2), T.f32), "n": 3}
    assert parse_args_spec("") == {}
    assert parse_args_spec("   ") == {}


@pytest.mark.parametrize("s", [Spec((3, 4), T.f32), Spec((), T.i16), Spec((5,), T.bool_)])
def test_str_is_the_text_form(s):
    assert parse_args_spec(f"A={s}") == {"A": s}


@pytest.mark.parametrize(
    "text, why",
    [
        ("A=512x256", "an array needs a dtype, e.g. '512x256:f32'"),
        ("A=512y256:f32", "dimension '512y256' is not a whole number"),
        ("A=-4:f32", "dimension '-4' is not a whole number"),
        ("A=4:f31", "'f31' is not a dtype (use one of bool_, i8,"),
        ("A=4:float32", "'float32' is not a dtype"),
        ("A", "there is no '='"),
        ("1A=3:f32", "'1A' is not a parameter name"),
        ("A=1:f32,,B=2:f32", "the item is empty"),
        ("A=1:f32,", "the item is empty"),
        ("n=abc", "'abc' is neither a number nor DIMS:DTYPE"),
    ],
)
def test_bad_item_names_the_piece_and_the_form(text, why):
    with pytest.raises(SpecError) as info:
        parse_args_spec(text)
    message = str(info.value)
    assert why in message
    assert "bad argument spec" in message
    assert "NAME=DIMSxDIMS:DTYPE" in message  # the expected form is in the fix
    assert isinstance(info.value, ValueError) and isinstance(info.value, KdslError)


def test_duplicate_name():
    with pytest.raises(SpecError, match="argument 'A' is given twice"):
        parse_args_spec("A=1:f32,n=2,A=2:f32")


def test_spec_function_normalizes():
    assert spec((512, 256), T.f32) == Spec((512, 256), T.f32)
    assert spec(8, "i32") == Spec((8,), T.i32)
    assert spec([np.int64(2), 3], np.float64) == Spec((2, 3), T.f64)
    assert spec((), T.u8).shape == ()


@pytest.mark.parametrize(
    "shape, dtype, why",
    [
        ((2, -1), T.f32, "negative dimension"),
        ((2.5, 3), T.f32, "is not a tuple of whole numbers"),
        ((2, 3), "complex64", "is not a kdsl dtype"),
    ],
)
def test_spec_function_rejects(shape, dtype, why):
    with pytest.raises(SpecError, match=why):
        spec(shape, dtype)


@pytest.mark.parametrize("dtype", [T.f16, T.bf16, T.f32, T.f64])
def test_random_floats_in_minus_one_one(dtype):
    (a,) = make_arguments({"a": Spec((64, 33), dtype)}, np.random.default_rng(1)).values()
    assert a.shape == (64, 33) and a.dtype == dtype.to_numpy()
    wide = a.astype(np.float64)
    assert wide.min() >= -1 and wide.max() <= 1 and np.count_nonzero(wide) > 0.9 * a.size
    assert wide.min() < -0.5 and wide.max() > 0.5  # spread over the range, not a constant


@pytest.mark.parametrize(
    "dtype, low, high", [(T.i8, -8, 8), (T.i64, -8, 8), (T.u8, 0, 16), (T.u32, 0, 16)]
)
def test_random_ints_in_a_small_range(dtype, low, high):
    (a,) = make_arguments({"a": Spec((1000,), dtype)}, np.random.default_rng(2)).values()
    assert a.dtype == dtype.to_numpy()
    assert a.min() == low and a.max() == high - 1


def test_random_bools_and_0d_and_scalars():
    made = make_arguments(
        {"m": Spec((1000,), T.bool_), "s": Spec((), T.f32), "n": 3, "eps": 1e-5, "flag": True},
        np.random.default_rng(3),
    )
    assert made["m"].dtype == np.bool_ and 300 < made["m"].sum() < 700
    assert made["s"].shape == () and made["s"].dtype == np.float32
    assert made["n"] == 3 and made["eps"] == 1e-5 and made["flag"] is True


def test_fresh_data_each_time():
    rng = np.random.default_rng(4)
    examples = {"a": Spec((16,), T.f32)}
    first, second = (make_arguments(examples, rng)["a"] for _ in range(2))
    assert not np.array_equal(first, second)


def test_make_arguments_rejects_other_values():
    with pytest.raises(SpecError, match="example argument 'a' is a list"):
        make_arguments({"a": [1, 2]}, np.random.default_rng(0))


def test_examples_give_a_constexpr_a_string_or_none():
    """A kd.constexpr example may be a string or None (matmul's activation="gelu"), so
    `kdsl autotune` can tune that variant; other parameters still take specs or numbers,
    and a kernel's filled-in examples (its defaults included) are valid examples again."""

    def epilogue(x, y, activation: kd.constexpr = None):
        i = kd.indices(x.shape[0])
        y[i] = x[i]

    example = {"x": kd.spec((8,), kd.f32), "y": kd.spec((8,), kd.f32), "activation": "gelu"}
    k = kd.kernel(epilogue, name="constexpr_examples", examples=[example])
    assert k.examples[0]["activation"] == "gelu"
    again = kd.kernel(
        epilogue, name="constexpr_examples_again", examples=[{**example, "activation": None}]
    )
    assert (
        kd.kernel(epilogue, name="filled", examples=again.examples).examples[0]["activation"]
        is None
    )
    with pytest.raises(kd.KernelArgumentError, match="example value for 'x' is a str"):
        kd.kernel(epilogue, name="bad", examples=[{**example, "x": "gelu"}])


def test_a_value_range_bounds_the_random_data():
    rng = np.random.default_rng(0)
    idx = spec((1000,), kd.i64, low=3, high=7).random(rng)
    assert idx.min() == 3 and idx.max() == 6
    x = spec((1000,), kd.f32, low=10.0, high=12.0).random(rng)
    assert 10.0 <= x.min() and x.max() < 12.0


@pytest.mark.parametrize(
    "dtype, low, high, why",
    [
        (kd.i64, 0, None, "both must be whole numbers"),
        (kd.i64, 0.5, 4, "both must be whole numbers"),
        (kd.f32, 2.0, 1.0, "is not below"),
        (kd.u8, 0, 300, "u8 holds 0 to 255"),
        (kd.bool_, 0, 1, "no value range"),
    ],
)
def test_a_bad_value_range_is_refused(dtype, low, high, why):
    with pytest.raises(SpecError, match=why):
        spec((4,), dtype, low=low, high=high)
