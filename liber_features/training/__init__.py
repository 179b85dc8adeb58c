"""Training data: the leak-free, point-in-time training set, built through Feast.

The models themselves (UIF + DIN / DCNv2, the loop, the ONNX export) are torch and live in
``encoders.ctr``.
"""
