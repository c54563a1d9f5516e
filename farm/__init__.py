"""farm: a distributed engine-build and calibration farm for TensorRT, ONNX Runtime and PyTorch."""

__version__ = "0.1.0"
