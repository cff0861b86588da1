"""AV and AVS captions: LLM fusion of V, A and S, through three text-generation backends.

- transformers: a causal LM from a local dir (chat template when the tokenizer has one), batched,
  left-padded.
- llamacpp: a GGUF file through llama-cpp-python (CPU, or all layers on the GPU when CUDA is present).
- openai: an OpenAI-compatible chat-completions endpoint (a vLLM server for scale): concurrent
  requests, a per-request deadline that holds during slow replies, replies capped in size, retries
  with backoff on connection errors, 429 and 5xx; the API key never follows a redirect to another
  origin, and only http(s) redirects are followed (ivdata/net.py).
All three return raw text; `clean_caption` turns it into one caption (no reasoning block, no
"Caption:" preamble, no quotes, one paragraph, closing punctuation).
"""
from __future__ import annotations

import json
import os
import re
import time
import urllib.error
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from ivdata.annotate.config import FuseConfig
from ivdata.annotate.prompts import AV, AVS, SYSTEM, av_prompt, avs_prompt, prompt_hash
from ivdata.net import DeadlineExceeded, NetError, open_url, read_capped


class TextGenerator(Protocol):
    name: str

    def generate(self, prompts: list[str]) -> list[str]: ...


class GenerationError(RuntimeError):
    pass


# -- cleaning --------------------------------------------------------------------------------------
_THINK = re.compile(r"<think>.*?</think>", re.S | re.I)
_PREAMBLE = re.compile(r"^\s*(?:sure[^:\n]*:|here(?:'s| is)[^:\n]*:|caption\s*:|answer\s*:|english\s*:)\s*", re.I)
_QUOTES = "\"'\u201c\u201d\u2018\u2019`"


def clean_caption(text: str, max_chars: int = 600) -> str:
    """One caption from an LLM answer; '' when nothing usable is left."""
    text = _THINK.sub("", text or "")
    text = re.sub(r"<\|[^|>]*\|>|</?s>", " ", text)               # stray special tokens
    paragraphs = [p for p in re.split(r"\n\s*\n|\n", text) if p.strip()]
    while paragraphs and (_PREAMBLE.fullmatch(paragraphs[0] + " ") or re.fullmatch(r"\W*", paragraphs[0])):
        paragraphs.pop(0)                                            # a lone "Caption:" line
    text = paragraphs[0] if paragraphs else ""
    prev = None
    while prev != text:
        prev = text
        text = _PREAMBLE.sub("", text).strip().strip(_QUOTES).strip()
    text = re.sub(r"\s+", " ", text)
    if len(text) > max_chars:                                        # cut at the last sentence end that fits
        cut = max(text.rfind(". ", 0, max_chars), text.rfind("! ", 0, max_chars), text.rfind("? ", 0, max_chars))
        text = text[: cut + 1] if cut > 0 else text[:max_chars].rsplit(" ", 1)[0]
    if text and text[-1].isalnum():
        text += "."
    return text[:1].upper() + text[1:]


# -- backends --------------------------------------------------------------------------------------
class TransformersGenerator:
    def __init__(self, model_dir: str, device: str = "cpu", max_new_tokens: int = 96, temperature: float = 0.0,
                 batch_size: int = 8, name: str | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        self.torch = torch
        self.tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self.tok.padding_side = "left"                # generation continues from the right edge
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, dtype=dtype).to(device).eval()
        self.device, self.max_new_tokens, self.temperature, self.batch_size = device, max_new_tokens, temperature, batch_size
        self.name = name or f"transformers:{os.path.basename(os.path.normpath(model_dir))}"

    def _render(self, prompt: str) -> str:
        if getattr(self.tok, "chat_template", None):
            return self.tok.apply_chat_template([{"role": "system", "content": SYSTEM},
                                                 {"role": "user", "content": prompt}],
                                                tokenize=False, add_generation_prompt=True)
        return f"{SYSTEM}\n\n{prompt}"

    def generate(self, prompts: list[str]) -> list[str]:
        out: list[str] = []
        for i in range(0, len(prompts), self.batch_size):
            texts = [self._render(p) for p in prompts[i: i + self.batch_size]]
            enc = self.tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
            sampling = self.temperature > 0
            with self.torch.inference_mode():
                gen = self.model.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=sampling,
                                          temperature=self.temperature if sampling else None,
                                          pad_token_id=self.tok.pad_token_id)
            out += self.tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        return out


class LlamaCppGenerator:
    def __init__(self, gguf: str, device: str = "cpu", max_new_tokens: int = 96, temperature: float = 0.0,
                 n_ctx: int = 4096, name: str | None = None):
        from llama_cpp import Llama
        self.llm = Llama(model_path=gguf, n_ctx=n_ctx, n_gpu_layers=-1 if device.startswith("cuda") else 0,
                         verbose=False)
        self.chat = bool(self.llm.metadata.get("tokenizer.chat_template"))
        self.max_new_tokens, self.temperature = max_new_tokens, temperature
        self.name = name or f"llamacpp:{os.path.basename(gguf)}"

    def generate(self, prompts: list[str]) -> list[str]:
        out = []
        for p in prompts:         # llama.cpp's python API serves one sequence per call
            if self.chat:
                r = self.llm.create_chat_completion(
                    messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": p}],
                    max_tokens=self.max_new_tokens, temperature=self.temperature)
                out.append(r["choices"][0]["message"]["content"] or "")
            else:
                r = self.llm(f"{SYSTEM}\n\n{p}", max_tokens=self.max_new_tokens, temperature=self.temperature)
                out.append(r["choices"][0]["text"])
        return out


class OpenAIHttpGenerator:
    RETRY_STATUS = {408, 429, 500, 502, 503, 504}
    MAX_REPLY_BYTES = 8 << 20     # a chat completion of a caption is a few KB; more is a broken or hostile server

    def __init__(self, url: str, model: str | None, api_key_env: str | None = None, max_new_tokens: int = 96,
                 temperature: float = 0.0, timeout_s: float = 120.0, retries: int = 3, concurrency: int = 8,
                 name: str | None = None, backoff_s: float = 1.0, max_reply_bytes: int = MAX_REPLY_BYTES):
        self.endpoint = url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = os.environ.get(api_key_env) if api_key_env else None
        if api_key_env and not self.api_key:
            raise GenerationError(f"environment variable {api_key_env} (fuse.api_key_env) is not set")
        self.max_new_tokens, self.temperature = max_new_tokens, temperature
        self.timeout_s, self.retries, self.concurrency, self.backoff_s = timeout_s, retries, concurrency, backoff_s
        self.max_reply_bytes = max_reply_bytes
        self.name = name or f"openai:{model}"

    def _one(self, prompt: str) -> str:
        body = {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}],
                "max_tokens": self.max_new_tokens, "temperature": self.temperature}
        if self.model:
            body["model"] = self.model
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(body).encode()
        last = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            deadline = time.monotonic() + self.timeout_s
            try:
                with open_url(self.endpoint, data=data, headers=headers, method="POST", timeout_s=self.timeout_s,
                              deadline=deadline) as r:
                    reply = json.loads(read_capped(r, self.max_reply_bytes, timeout_s=self.timeout_s,
                                                   deadline=deadline))
                return reply["choices"][0]["message"]["content"] or ""
            except urllib.error.HTTPError as e:
                try:
                    last = f"HTTP {e.code} from {self.endpoint}: {e.read(200)!r}"   # the start of the body only
                finally:
                    e.close()
                if e.code not in self.RETRY_STATUS:
                    break                                   # a bad request stays bad: do not hammer
            except DeadlineExceeded:
                last = f"no complete reply from {self.endpoint} within {self.timeout_s:g} s"
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                last = f"{type(e).__name__} from {self.endpoint}: {e}"
            except (KeyError, IndexError, TypeError, json.JSONDecodeError) as e:
                last = f"malformed reply from {self.endpoint}: {e}"
            except NetError as e:                           # too large, or a refused redirect: not transient
                last = f"{self.endpoint}: {e}"
                break
        raise GenerationError(f"{last} (after {attempt + 1} attempt(s))")

    def generate(self, prompts: list[str]) -> list[str]:
        with ThreadPoolExecutor(max_workers=max(1, min(self.concurrency, len(prompts)))) as pool:
            return list(pool.map(self._one, prompts))


def load_generator(cfg: FuseConfig, device: str = "cpu") -> TextGenerator:
    if cfg.backend == "transformers":
        return TransformersGenerator(cfg.model, device, cfg.max_new_tokens, cfg.temperature, cfg.batch_size,
                                     cfg.model_name)
    if cfg.backend == "llamacpp":
        return LlamaCppGenerator(cfg.model, device, cfg.max_new_tokens, cfg.temperature, cfg.n_ctx, cfg.model_name)
    return OpenAIHttpGenerator(cfg.url, cfg.model, cfg.api_key_env, cfg.max_new_tokens, cfg.temperature,
                               cfg.timeout_s, cfg.retries, cfg.concurrency, cfg.model_name)


# -- fusion ----------------------------------------------------------------------------------------
def fusion_hashes(cfg: FuseConfig) -> dict[str, str]:
    settings = {"max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature, "system": SYSTEM}
    return {"AV": prompt_hash(AV, settings), "AVS": prompt_hash(AVS, settings)}


def fuse(generator: TextGenerator, inputs: list[dict]) -> list[dict[str, str]]:
    """inputs: one dict per clip with audio, holding V, A and S texts ('' when a modality gave nothing).
    Returns {"AV": ..., "AVS": ...} per clip. A clip without speech still gets AVS (the prompt marks the
    speech as absent), so every clip with audio carries the same caption kinds."""
    prompts = []
    for x in inputs:
        prompts += [av_prompt(x["V"], x["A"]), avs_prompt(x["V"], x["A"], x["S"])]
    answers = generator.generate(prompts) if prompts else []
    if len(answers) != len(prompts):
        raise GenerationError(f"{generator.name} returned {len(answers)} answers for {len(prompts)} prompts")
    return [{"AV": clean_caption(answers[2 * i]), "AVS": clean_caption(answers[2 * i + 1])}
            for i in range(len(inputs))]
