"""ONNX export and TensorRT engine building (installed as ceds_deploy.export)."""
