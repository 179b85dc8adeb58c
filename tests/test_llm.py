"""encoders/uil/llm.py: the transformers backend on a tiny random model, the OpenAI-compatible backend
against a local HTTP server, load_llm's grammar, and one run of the real packaged SmolLM2."""

from __future__ import annotations

import socket

import pytest
from pydantic import ValidationError
from tinymodels import tiny_llm_dir  # noqa: F401  (session fixture)

from encoders.uil import checkpoints
from encoders.uil.llm import LLM, DecodingConfig, Generation, OpenAICompatLLM, TransformersLLM, load_llm
from liber_features.errors import ConfigError, EncoderError, LLMUnavailable
from liber_features.testing import FakeOpenAIServer

FIXED = DecodingConfig(max_new_tokens=6, min_new_tokens=6, batch_size=4)


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "Summarise."}, {"role": "user", "content": text}]


PROMPTS = [chat("science fiction"), chat("jazz albums " * 15), chat("crime"), chat("comedy and drama " * 5),
           chat("horror"), chat("western musical")]


@pytest.fixture(scope="module")
def tiny(tiny_llm_dir) -> TransformersLLM:  # noqa: F811
    return TransformersLLM(tiny_llm_dir, device="cpu", decoding=FIXED)


def test_batch_order_and_token_counts(tiny: TransformersLLM) -> None:
    gens = tiny.generate(PROMPTS)
    assert isinstance(tiny, LLM) and len(gens) == len(PROMPTS)  # 6 prompts → chunks of 4 and 2
    alone = [tiny.generate([p])[0] for p in PROMPTS]
    for g, a, p in zip(gens, alone, PROMPTS):
        assert isinstance(g, Generation) and g.completion_tokens == 6
        # prompt_tokens counts the rendered prompt without pads
        rendered = tiny.tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False)
        assert g.prompt_tokens == len(tiny.tokenizer(rendered, add_special_tokens=False)["input_ids"])
        # Left padding: a prompt padded inside a batch continues exactly as it does alone (greedy)
        assert g == a
    assert gens[1].prompt_tokens > gens[0].prompt_tokens


def test_decoding_recorded_and_id_stable(tiny: TransformersLLM, tiny_llm_dir) -> None:  # noqa: F811
    assert tiny.decoding == {"max_new_tokens": 6, "min_new_tokens": 6, "repetition_penalty": 1.1,
                             "do_sample": False, "temperature": 0.0}
    assert tiny.tokenizer.padding_side == "left" and tiny.tokenizer.pad_token == tiny.tokenizer.eos_token
    again = TransformersLLM(tiny_llm_dir, device="cpu")
    assert again.llm_id == tiny.llm_id
    assert again.llm_id.startswith(f"transformers:{tiny_llm_dir.name}@") and len(again.llm_id.split("@")[1]) == 12
    assert load_llm(str(tiny_llm_dir)).llm_id == tiny.llm_id


def test_completion_stops_at_eos(tiny_llm_dir) -> None:  # noqa: F811
    llm = TransformersLLM(tiny_llm_dir, device="cpu", decoding=DecodingConfig(max_new_tokens=40))
    for g in llm.generate(PROMPTS[:3]):
        assert g.completion_tokens in range(1, 41)  # stopped at EOS or at the cap, never 0


def test_decoding_config_validation() -> None:
    with pytest.raises(ValidationError):
        DecodingConfig(max_new_tokens=513)
    with pytest.raises(ValidationError):
        DecodingConfig(do_sample=True)  # sampling at temperature 0 is ambiguous
    with pytest.raises(ValidationError):
        DecodingConfig(max_tokens=10)  # extra="forbid": typos fail loudly
    assert DecodingConfig(do_sample=True, temperature=0.7).recorded()["temperature"] == 0.7


def test_bad_prompts_and_specs(tiny: TransformersLLM, tmp_path) -> None:
    with pytest.raises(EncoderError):
        tiny.generate([[{"role": "user"}]])
    with pytest.raises(EncoderError):
        tiny.generate([[]])
    with pytest.raises(ConfigError):
        load_llm(str(tmp_path / "nope"))
    with pytest.raises(ConfigError):
        load_llm("openai:localhost:8000")  # no scheme, no #model
    with pytest.raises(EncoderError):
        TransformersLLM(tmp_path, gguf_file="missing.gguf")


# --- OpenAI-compatible backend against a local server -------------------------------------------

def test_openai_happy_path_and_concurrency_bound() -> None:
    with FakeOpenAIServer(delay_s=0.05) as server:
        llm = OpenAICompatLLM(server.url + "/v1/", "tiny", max_concurrency=3, backoff_s=0.01,
                              decoding=DecodingConfig(max_new_tokens=32))
        prompts = [chat(f"p{i}") for i in range(12)]
        gens = llm.generate(prompts)
        llm.close()
    assert [g.text for g in gens] == [f"echo:p{i}" for i in range(12)]  # order kept, text stripped
    assert gens[5] == Generation("echo:p5", 2, 3)  # counts come from 'usage'
    assert server.peak == 3  # 12 requests of 50 ms, never more than 3 at once
    assert server.bodies[0]["max_tokens"] == 32 and server.bodies[0]["temperature"] == 0.0
    assert server.bodies[0]["repetition_penalty"] == 1.1 and "min_tokens" not in server.bodies[0]
    assert llm.llm_id == f"openai:{server.url}/tiny"  # '/v1/' suffix normalised away
    assert llm.decoding == DecodingConfig(max_new_tokens=32).recorded()


def test_openai_retries_after_500() -> None:
    with FakeOpenAIServer(fail_first=2) as server:
        llm = OpenAICompatLLM(server.url, "tiny", max_concurrency=1, retries=3, backoff_s=0.01)
        assert llm.generate([chat("again")])[0].text == "echo:again"
    assert server.seen == 3


def test_openai_gives_up_with_the_url() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    llm = OpenAICompatLLM(f"http://127.0.0.1:{port}", "tiny", backoff_s=0.01)
    with pytest.raises(LLMUnavailable, match=f"127.0.0.1:{port}/v1/chat/completions"):
        llm.generate([chat("hello")])
    with FakeOpenAIServer(fail_first=100) as server:
        llm = OpenAICompatLLM(server.url, "tiny", retries=1, backoff_s=0.01)
        with pytest.raises(LLMUnavailable, match="HTTP 500"):
            llm.generate([chat("x")])
    assert server.seen == 2


# --- the real packaged model --------------------------------------------------------------------

@pytest.mark.models
@pytest.mark.slow
def test_real_smollm2_converts_once_then_loads_from_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LIBER_CACHE_DIR", str(tmp_path))
    decoding = DecodingConfig(max_new_tokens=24)
    prompts = [chat("Movies watched: Alien, Aliens, Blade Runner, The Matrix. Describe the taste."),
               [{"role": "user", "content": "List two fruits."}]]
    gguf = checkpoints.smollm2_gguf()
    direct = load_llm(str(gguf), device="cpu", decoding=decoding)  # dequantised in memory
    out = direct.generate(prompts)
    assert all(g.text and g.completion_tokens > 0 and g.prompt_tokens > 10 for g in out)
    del direct
    load_llm("smollm2", device="cpu", decoding=decoding)  # converts, then loads the copy
    assert (tmp_path / "models" / "smollm2-135m-instruct" / "model.safetensors").is_file()
    # How much faster the cached copy loads is a figure: bench/bench_encode.py --checkpoint-load.
    cached = load_llm(None, device="cpu", decoding=decoding)
    assert cached.generate(prompts) == out  # the plain copy writes the GGUF's exact text
    assert cached.llm_id.startswith("transformers:SmolLM2-135M-Instruct@")
    assert checkpoints.smollm2_checkpoint() == tmp_path / "models" / "smollm2-135m-instruct"
