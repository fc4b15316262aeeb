"""Telling CUDA arrays from host ones, without a GPU."""

from __future__ import annotations

import numpy as np

from kdsl.targets.cuda.arrays import device_array, is_device
from tests import zoo


class Tensor:
    """Like a PyTorch CPU tensor: its class has `__cuda_array_interface__`, which only a
    CUDA tensor can answer; it is read through DLPack."""

    is_cuda = False

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    @property
    def __cuda_array_interface__(self) -> dict[str, object]:
        raise AttributeError("not a CUDA tensor")

    def __dlpack__(self, stream=None):
        return self.array.__dlpack__()

    def __dlpack_device__(self):
        return self.array.__dlpack_device__()


def test_a_cpu_tensor_is_a_host_array():
    x = np.random.default_rng(0).random((3, 5), dtype=np.float32)
    t = Tensor(x)
    assert not is_device(t) and device_array(t) is None
    np.testing.assert_array_equal(zoo.scaled_copy(t, 2.0), 2 * x)
