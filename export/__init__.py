"""ONNX and TensorRT export, the Triton model repository, parity checks (the runners live in engine/backends.py)."""
