"""The CTR ranker (torch): UIF fusion, DIN / DCNv2 backbones, training loop, evaluation grid, ONNX export."""
