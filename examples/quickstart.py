"""A first kdsl program: a matmul kernel, checked against NumPy, with its IR printed."""

import numpy as np

import kdsl as kd


@kd.kernel
def matmul(A, B, C):
    i, j, k = kd.indices(A.shape[0], B.shape[1], A.shape[1])
    C[i, j] = kd.sum(A[i, k] * B[k, j], over=k)


if __name__ == "__main__":
    rng = np.random.default_rng(0)
    a = rng.standard_normal((67, 45), dtype=np.float32)
    b = rng.standard_normal((45, 31), dtype=np.float32)
    c = np.empty((67, 31), np.float32)
    matmul(a, b, c)
    print(matmul.ir(a, b, c))
    error = np.abs(c - a @ b).max()
    print(f"max |kdsl - numpy| = {error:.2e}")
    assert error < 1e-4
