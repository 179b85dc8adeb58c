"""LLM backends behind one small protocol: chat prompts in, texts + token counts out.

The torch-free job code (UIL in ``liber_features``) only sees :class:`LLM`; torch and transformers
are imported inside :class:`TransformersLLM`, so importing this module stays cheap.

``llm_id`` names the weights (a content hash, see ``checkpoints.fingerprint``) and ``decoding`` the
settings; both are recorded with every output, so a ledger row says what wrote it.

Spec grammar of :func:`load_llm`::

    None | "" | "smollm2"        the packaged SmolLM2-135M-Instruct (cached plain checkpoint)
    "openai:<base_url>#<model>"  an OpenAI-compatible server, e.g. openai:http://gpu1:8000#Qwen/Qwen2.5-7B-Instruct
                                 (API key from $LIBER_LLM_API_KEY, else $OPENAI_API_KEY); several
                                 comma-separated URLs make a pool of replicas (openai_pool.py)
    "<dir>"                      a local transformers checkpoint folder
    "<dir>/<file>.gguf"          a GGUF file, loaded through transformers (dequantised)
"""

from __future__ import annotations

import os
from pathlib import Path

from encoders.uil import checkpoints

# The shared types and the server backend live beside this module; they are named here too, so
# ``from encoders.uil.llm import ...`` stays the one import a caller needs.
from encoders.uil.generation import LLM, DecodingConfig, Generation, Prompt, check_prompts
from encoders.uil.openai_llm import OpenAICompatLLM
from encoders.uil.openai_pool import OpenAIPool
from liber_features.errors import ConfigError, EncoderError
from liber_features.redact import redact_url

__all__ = ["LLM", "DecodingConfig", "Generation", "OpenAICompatLLM", "OpenAIPool", "TransformersLLM", "load_llm"]


class TransformersLLM:
    """Any local transformers checkpoint folder, or a folder + ``gguf_file``.

    CUDA runs bf16 (fp16 where bf16 is unsupported), CPU runs fp32. Prompts are rendered with the
    checkpoint's chat template, left-padded (decoder-only models continue from the last position)
    and generated in chunks of ``decoding.batch_size``.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        gguf_file: str | None = None,
        device: str | None = None,
        decoding: DecodingConfig | None = None,
        name: str | None = None,
    ) -> None:
        os.environ["HF_HUB_OFFLINE"] = "1"  # hubs are unreachable; never try, never hang
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(path)
        if not path.is_dir() or (gguf_file is not None and not (path / gguf_file).is_file()):
            raise EncoderError(f"no checkpoint at {path / (gguf_file or '')}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            dtype = torch.float32
        self.tokenizer = AutoTokenizer.from_pretrained(path, gguf_file=gguf_file)
        if not self.tokenizer.chat_template:
            raise EncoderError(f"{path} has no chat template: it is not an instruct/chat checkpoint")
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token  # masked out; any id will do
        model = AutoModelForCausalLM.from_pretrained(path, gguf_file=gguf_file, dtype=dtype)
        self.model = model.to(self.device).eval()
        self.config = decoding or DecodingConfig()
        self.decoding = self.config.recorded()
        stem = name or (Path(gguf_file).stem if gguf_file else path.name)
        self.llm_id = f"transformers:{stem}@{checkpoints.fingerprint(path, gguf_file=gguf_file)}"
        self.special_tokens = special_tokens(self.tokenizer)

    def prompt_ids(self, messages: Prompt) -> list[int]:
        """The token ids the model sees for one chat prompt (template + generation prompt)."""
        enc = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        ids = enc["input_ids"] if hasattr(enc, "keys") else enc
        return [int(i) for i in ids]

    def _generation_config(self):
        from transformers import GenerationConfig

        gen = self.model.generation_config
        c = self.config
        # A fresh config, not the checkpoint's: its own sampling defaults must not leak into
        # outputs that we record as greedy.
        kwargs = dict(max_new_tokens=c.max_new_tokens, min_new_tokens=c.min_new_tokens,
                      repetition_penalty=c.repetition_penalty, do_sample=c.do_sample)
        if c.do_sample:
            kwargs["temperature"] = c.temperature
        return GenerationConfig(
            **kwargs,
            bos_token_id=gen.bos_token_id,
            eos_token_id=gen.eos_token_id if gen.eos_token_id is not None else self.tokenizer.eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
        )

    def _eos_ids(self, gen_config) -> set[int]:
        eos = gen_config.eos_token_id
        return set(eos if isinstance(eos, list) else [eos])

    def generate(self, prompts: list[Prompt]) -> list[Generation]:
        """Chat prompts → generations in the same order. Each chunk: ``input_ids (B, L)`` →
        ``output (B, L + T)``; the first ``L`` columns (the left-padded prompt) are dropped."""
        import torch

        check_prompts(prompts)
        gen_config = self._generation_config()
        eos_ids = self._eos_ids(gen_config)
        limit = getattr(self.model.config, "max_position_embeddings", None)
        out: list[Generation] = []
        for start in range(0, len(prompts), self.config.batch_size):
            chunk = prompts[start : start + self.config.batch_size]
            enc = self.tokenizer.apply_chat_template(
                chunk, add_generation_prompt=True, padding=True, return_tensors="pt", return_dict=True
            ).to(self.device)
            width = enc["input_ids"].shape[1]
            if limit is not None and width + self.config.max_new_tokens > limit:
                raise EncoderError(
                    f"prompt of {width} tokens + {self.config.max_new_tokens} new exceeds the "
                    f"model's context of {limit}"
                )
            with torch.inference_mode():
                ids = self.model.generate(**enc, generation_config=gen_config)
            for prompt_len, row in zip(enc["attention_mask"].sum(dim=1).tolist(), ids[:, width:].tolist()):
                # Finished rows are padded up to the longest one: count up to and with the first EOS.
                n = next((i + 1 for i, t in enumerate(row) if t in eos_ids), len(row))
                text = self.tokenizer.decode(row[:n], skip_special_tokens=True).strip()
                out.append(Generation(text, int(prompt_len), n))
        return out


def special_tokens(tokenizer) -> tuple[str, ...]:
    """The tokenizer's own control strings, asked of the tokenizer (no hand-kept list).

    Every special token, plus every added token that is special or looks like a marker (holds
    ``<``, ``>``, ``[``, ``]`` or ``|``): a tokenizer matches added tokens before ordinary text,
    so a title holding ``<file_sep>`` would otherwise reach SmolLM2 as its control token. Added
    tokens that are plain words or whitespace are harmless and stay.
    """
    found = set(tokenizer.all_special_tokens)
    for token in getattr(tokenizer, "added_tokens_decoder", {}).values():
        content = getattr(token, "content", str(token))
        if getattr(token, "special", False) or any(c in content for c in "<>[]|"):
            found.add(content)
    return tuple(sorted((t for t in found if t and t.strip()), key=lambda t: (-len(t), t)))


def load_llm(
    spec: str | None, *, device: str | None = None, decoding: DecodingConfig | None = None
) -> LLM:
    """Build the backend a spec names (grammar in the module docstring)."""
    if spec is None or spec in ("", "smollm2"):
        path = checkpoints.smollm2_checkpoint()
        return TransformersLLM(path, device=device, decoding=decoding, name="SmolLM2-135M-Instruct")
    if spec.startswith("openai:"):
        urls, sep, model = spec[len("openai:") :].partition("#")
        bases = [u.strip() for u in urls.split(",")]
        if not sep or not model or not all(b.startswith(("http://", "https://")) for b in bases):
            raise ConfigError(f"LLM spec {redact_url(spec)!r}: expected openai:http(s)://host:port[,...]#model")
        from liber_features.settings import get_settings

        key = get_settings().llm_api_key
        api_key = key.get_secret_value() if key is not None else os.environ.get("OPENAI_API_KEY")
        # A pool even of one server: the id is then the model's, so adding a replica re-encodes nothing.
        return OpenAIPool(bases, model, api_key=api_key, decoding=decoding)
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return TransformersLLM(path.parent, gguf_file=path.name, device=device, decoding=decoding)
    if path.is_dir():
        return TransformersLLM(path, device=device, decoding=decoding)
    raise ConfigError(
        f"LLM spec {redact_url(spec)!r} is neither 'smollm2', 'openai:<url>#<model>', a checkpoint folder "
        "nor a .gguf file"
    )
