"""Model contract shared by training and serving: one definition of every model input, and the card.

Nothing here knows torch or onnxruntime; the training builder and the scorer both go through it, so
what a model sees online is what it saw in training.
"""
