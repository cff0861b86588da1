"""V captions at two scales: frames at about 1 fps and the middle frame, merged into one caption.

Frames are decoded in-process with PyAV in one pass; a decode that breaks off early (corrupt or
truncated stream) raises FrameDecodeError instead of captioning a fragment. Captions come from a
transformers image-to-text model loaded from a dir (VisionEncoderDecoder, BLIP, GIT: anything whose
`generate(pixel_values=...)` returns text tokens). The merge is an LLM call with the V prompt
(InternVid2's recipe), or, with no LLM, the consensus caption: the one sharing most words with the rest.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import av
import numpy as np
from PIL import Image

from ivdata.annotate.fuse import TextGenerator, clean_caption
from ivdata.annotate.prompts import v_merge_prompt


class FrameDecodeError(RuntimeError):
    pass


@dataclass
class ClipFrames:
    frames: list[Image.Image]      # at ~fps, in time order
    times: list[float]
    middle: Image.Image
    duration_s: float


def sample_frames(path: str, fps: float = 1.0, max_frames: int = 30, expect_duration_s: float | None = None,
                  min_coverage: float = 0.9) -> ClipFrames:
    """Frames nearest to t = (i + 0.5) / fps, plus the frame nearest the middle, in one decode pass."""
    try:
        with av.open(path) as c:
            if not c.streams.video:
                raise FrameDecodeError(f"{path} has no video stream")
            vs = c.streams.video[0]
            duration = expect_duration_s or (float(vs.duration * vs.time_base) if vs.duration else
                                             (c.duration / 1e6 if c.duration else None))
            if not duration:
                raise FrameDecodeError(f"{path}: unknown duration")
            n = max(1, min(max_frames, int(round(duration * fps))))
            targets = list(np.linspace(0, duration, n, endpoint=False) + duration / (2 * n))
            wanted = targets + [duration / 2]
            best: list[tuple[float, av.VideoFrame | None]] = [(float("inf"), None)] * len(wanted)
            last_t = 0.0
            for frame in c.decode(vs):
                t = float(frame.time) if frame.time is not None else last_t
                last_t = t
                for j, w in enumerate(wanted):
                    if abs(t - w) < best[j][0]:
                        best[j] = (abs(t - w), frame)      # converted to RGB once, at the end
    except av.error.FFmpegError as e:
        raise FrameDecodeError(f"video decode failed in {path}: {e}") from e
    frame_step = 1.0 / float(vs.average_rate) if vs.average_rate else 0.1
    if last_t + frame_step < min_coverage * duration or best[0][1] is None:
        raise FrameDecodeError(f"video decode stopped at {last_t:.2f}s of {duration:.2f}s in {path}")
    images = [f.to_image() for _, f in best]
    return ClipFrames(images[:-1], [round(t, 3) for t in targets], images[-1], duration)


class ImageCaptioner:
    def __init__(self, model_dir: str, device: str = "cpu", max_new_tokens: int = 40, batch_size: int = 16):
        import torch
        from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer
        self.torch = torch
        self.proc = AutoImageProcessor.from_pretrained(model_dir, local_files_only=True)
        self.tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        self.model = AutoModelForImageTextToText.from_pretrained(model_dir, local_files_only=True,
                                                                 dtype=dtype).to(device).eval()
        self.device, self.dtype, self.max_new_tokens, self.batch_size = device, dtype, max_new_tokens, batch_size
        self.name = f"image2text:{os.path.basename(os.path.normpath(model_dir))}"

    def caption(self, images: list[Image.Image]) -> list[str]:
        out = []
        for i in range(0, len(images), self.batch_size):
            px = self.proc([im.convert("RGB") for im in images[i: i + self.batch_size]], return_tensors="pt")
            px = px["pixel_values"].to(self.device, self.dtype)
            with self.torch.inference_mode():
                gen = self.model.generate(pixel_values=px, max_new_tokens=self.max_new_tokens, do_sample=False)
            out += [t.strip() for t in self.tok.batch_decode(gen, skip_special_tokens=True)]
        return out


def consensus(captions: list[str], prefer: int) -> str:
    """The caption with the highest mean word-overlap (Jaccard) with the others; ties go to `prefer`."""
    words = [set(c.lower().split()) for c in captions]

    def score(i):
        others = [len(words[i] & w) / max(len(words[i] | w), 1) for j, w in enumerate(words) if j != i]
        return (sum(others) / len(others) if others else 0.0, i == prefer)

    return captions[max(range(len(captions)), key=score)] if captions else ""


def merge_visual(frame_captions: list[str], middle_caption: str, generator: TextGenerator | None = None) -> str:
    if generator is not None:
        return clean_caption(generator.generate([v_merge_prompt(frame_captions, middle_caption)])[0])
    allc = frame_captions + [middle_caption]
    return clean_caption(consensus(allc, prefer=len(allc) - 1))


def caption_clips(captioner: ImageCaptioner, clips: list[ClipFrames],
                  generator: TextGenerator | None = None) -> list[dict]:
    """One batched captioner pass over every frame of every clip, then one merge per clip."""
    images, spans = [], []
    for cf in clips:
        spans.append((len(images), len(cf.frames)))
        images += cf.frames + [cf.middle]
    caps = captioner.caption(images) if images else []
    per_clip = [(caps[start: start + n], caps[start + n]) for start, n in spans]
    if generator is not None:       # one batched LLM call for every clip's merge
        merged = [clean_caption(a) for a in generator.generate([v_merge_prompt(f, m) for f, m in per_clip])]
    else:
        merged = [merge_visual(f, m) for f, m in per_clip]
    return [{"V": v, "frame_captions": f, "middle_caption": m, "times": cf.times}
            for v, (f, m), cf in zip(merged, per_clip, clips)]
