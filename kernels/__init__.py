"""The kdsl kernel library (matmul, attention, norms, softmax, quantized), written in kdsl."""
