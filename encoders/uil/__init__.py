"""UIL backends (torch): LLMs (transformers, OpenAI-compatible servers), the text encoder, packaged checkpoints."""
