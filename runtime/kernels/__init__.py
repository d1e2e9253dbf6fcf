"""CPU kernels of our own, compiled on this host and run inside onnxruntime as custom ops."""
