"""Deployment formats of a calibrated quantization: packed low-bit safetensors (`packed`) and ONNX QDQ (`onnx_qdq`).

Both start from a fake-quant model (`bench.quant.quantize_model` + a method's bounds); neither knows a method.
"""
