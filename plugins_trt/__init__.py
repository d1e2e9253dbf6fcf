"""CUDA kernels, numpy references, TensorRT plugins, ONNX lowering and the engine builder."""
