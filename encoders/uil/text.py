"""Text ("knowledge") encoder for UIF: interest summaries and shifts → unit-norm float32 vectors.

Plain transformers ``AutoModel`` + attention-masked mean pooling + L2 normalisation, which is what
sentence-transformers does for all-MiniLM-L6-v2 (reproduced to ~3e-8), without depending on it.
Any BERT-like checkpoint folder works; the default is the packaged all-MiniLM-L6-v2 (384-d).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from encoders.uil import checkpoints
from liber_features.errors import EncoderError, VectorShapeError

__all__ = ["TextEncoder"]


class TextEncoder:
    """``encode(texts)`` → ``(N, D)`` float32, rows L2-normalised, in the texts' order.

    Runs fp32 on CPU and GPU alike: vectors are stored and compared across runs and machines,
    and half precision would move them by ~1e-3. ``encoder_id`` is ``<name>@<12 hex>``, a hash of
    the weights, tokenizer and ``max_length`` (truncation changes the vectors of long texts).
    """

    def __init__(
        self,
        path: str | Path | None = None,
        device: str | None = None,
        batch_size: int = 64,
        max_length: int = 256,
    ) -> None:
        os.environ["HF_HUB_OFFLINE"] = "1"  # hubs are unreachable; never try, never hang
        import torch
        from transformers import AutoModel, AutoTokenizer

        if batch_size < 1 or max_length < 2:
            raise EncoderError("batch_size must be ≥ 1 and max_length ≥ 2")
        if path is None:
            path, name = checkpoints.minilm_path(), "all-MiniLM-L6-v2"
        else:
            path = Path(path)
            name = path.name
        if not (path / "config.json").is_file():
            raise EncoderError(f"no transformers checkpoint (config.json) at {path}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.batch_size = batch_size
        self.max_length = max_length
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path, dtype=torch.float32).to(self.device).eval()
        self.dim = int(self.model.config.hidden_size)
        self.encoder_id = f"{name}@{checkpoints.fingerprint(path, extra=f'max_length={max_length}')}"

    def encode(self, texts: list[str]) -> np.ndarray:
        """``texts`` (N) → ``(N, D)`` float32 unit vectors; ``[]`` → ``(0, D)``.

        Texts are batched by length (long with long) so little compute goes to padding; the
        result is put back in input order.
        """
        import torch

        if not all(isinstance(t, str) for t in texts):
            raise EncoderError("TextEncoder.encode takes a list of str")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            enc = self.tokenizer(
                [texts[i] for i in idx], padding=True, truncation=True,
                max_length=self.max_length, return_tensors="pt",
            ).to(self.device)
            with torch.inference_mode():
                hidden = self.model(**enc).last_hidden_state  # (B, L, H)
            if hidden.shape[-1] != self.dim:
                raise VectorShapeError(
                    f"encoder returned width {hidden.shape[-1]}, expected {self.dim}"
                )
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
            # Mean over real tokens only: pads must not pull a short text's vector around.
            summed = (hidden * mask).sum(dim=1)  # (B, H)
            mean = summed / mask.sum(dim=1).clamp(min=1e-9)
            unit = torch.nn.functional.normalize(mean, p=2, dim=1)
            out[idx] = unit.float().cpu().numpy()
        return out
