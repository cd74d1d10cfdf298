"""Inference: image decoding -> dynamic batcher -> embedder on a runtime (torch or ONNX Runtime)."""
