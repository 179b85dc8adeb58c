"""Torch side of liber-features: ``uil`` (LLM backends, text encoder, checkpoints) and ``ctr``
(UIF, backbones, training, export).

Importing this package stays cheap; torch/transformers load inside the classes that need them.
"""

from __future__ import annotations

import os

# Model-loading progress bars from transformers add nothing to a job's own progress bar and
# flood logs; hubs are unreachable here, so never try them (or wait on them).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
