"""Deployment: ONNX export with an onnxruntime-backed segmenter, and the local prompting page (serve)."""
