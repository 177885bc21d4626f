"""ONNX and TensorRT export, runners with one infer() interface, parity checks."""
