"""encoders/uil/text.py: masked mean pooling on a tiny random BERT, and the real all-MiniLM-L6-v2."""

from __future__ import annotations

import numpy as np
import pytest
from tinymodels import tiny_bert_dir  # noqa: F401  (session fixture)

from encoders.uil.text import TextEncoder
from liber_features.errors import EncoderError, VectorShapeError

TEXTS = ["the user liked science fiction", "jazz", "crime novels and detective stories " * 4]


@pytest.fixture(scope="module")
def tiny(tiny_bert_dir) -> TextEncoder:  # noqa: F811
    return TextEncoder(tiny_bert_dir, device="cpu", batch_size=2)


def test_shape_dtype_unit_norm_and_order(tiny: TextEncoder) -> None:
    vecs = tiny.encode(TEXTS)
    assert vecs.shape == (3, tiny.dim) == (3, 32) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-6)
    # batching by length must not reorder: each row equals the text encoded alone
    for text, row in zip(TEXTS, vecs):
        np.testing.assert_allclose(tiny.encode([text])[0], row, atol=1e-6)


def test_padding_does_not_move_a_vector(tiny: TextEncoder) -> None:
    alone = tiny.encode(["jazz"])[0]
    padded = tiny.encode(["jazz", "a much longer text about crime novels and detective stories"])[0]
    np.testing.assert_allclose(alone, padded, atol=1e-6)


def test_empty_and_bad_input(tiny: TextEncoder) -> None:
    assert tiny.encode([]).shape == (0, 32)
    with pytest.raises(EncoderError):
        tiny.encode(["ok", None])  # type: ignore[list-item]


def test_encoder_id_names_weights_and_truncation(tiny: TextEncoder, tiny_bert_dir) -> None:  # noqa: F811
    assert tiny.encoder_id == TextEncoder(tiny_bert_dir).encoder_id
    assert tiny.encoder_id.startswith(f"{tiny_bert_dir.name}@")
    assert TextEncoder(tiny_bert_dir, max_length=16).encoder_id != tiny.encoder_id


def test_width_mismatch_raises(tiny_bert_dir) -> None:  # noqa: F811
    enc = TextEncoder(tiny_bert_dir)
    enc.dim = 384  # as if the config promised another width than the model produces
    with pytest.raises(VectorShapeError):
        enc.encode(["jazz"])


def test_missing_checkpoint(tmp_path) -> None:
    with pytest.raises(EncoderError):
        TextEncoder(tmp_path)


@pytest.mark.models
@pytest.mark.slow
def test_real_minilm() -> None:
    enc = TextEncoder(device="cpu")
    assert enc.dim == 384 and enc.encoder_id.startswith("all-MiniLM-L6-v2@")
    v = enc.encode([
        "This user enjoys science fiction movies about space travel.",
        "Likes sci-fi films set in outer space.",
        "Prefers slow cooking recipes with root vegetables.",
    ])
    assert v.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.3
