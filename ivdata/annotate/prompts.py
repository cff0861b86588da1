"""Prompt texts for VidCap's LLM steps and the stable hash each caption records.

The fusion prompts follow the structure InternVideo2 describes for AV and AVS captions: the
modalities count equally, parts that cannot be understood are dropped, and the answer is one natural
sentence rather than the inputs glued together. The wording is ours. A caption's `prompt_hash`
covers the prompt text and every setting that changes the output, so editing a prompt (or a
decoding setting) makes a rerun caption the clips again instead of silently mixing two prompts.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

PROMPT_VERSION = "vidcap-1"

SYSTEM = "You write short, factual captions for video clips."

V_MERGE = (
    "Below are captions of frames sampled about once per second from one video clip, in time order, "
    "followed by a caption of its middle frame. Write one natural sentence that describes what happens "
    "in the clip. Keep what the captions agree on, describe change over time when there is any, and "
    "leave out details that appear in only one frame and contradict the rest.\n"
    "Frame captions:\n{frames}\n"
    "Middle frame: {middle}\n"
    "Caption:")

AV = (
    "Describe a video clip from two descriptions of it: what is seen and what is heard. Give the two "
    "equal weight. If a description is incomprehensible or clearly unrelated noise, leave that part out. "
    "Answer with one natural, fluent sentence; do not simply join the descriptions together.\n"
    "Visual: {visual}\n"
    "Audio: {audio}\n"
    "Caption:")

AVS = (
    "Describe a video clip from three descriptions of it: what is seen, what is heard, and what is said. "
    "Give the three equal weight. If a description is incomprehensible or clearly unrelated noise, leave "
    "that part out; use the speech for what it tells about the scene, not as a quotation. Answer with "
    "one natural, fluent sentence; do not simply join the descriptions together.\n"
    "Visual: {visual}\n"
    "Audio: {audio}\n"
    "Speech: {speech}\n"
    "Caption:")

TRANSLATE = (
    "Translate the following {lang} speech transcript into English. Answer with the translation only.\n"
    "Transcript: {text}\n"
    "English:")


def prompt_hash(*parts: Any) -> str:
    """A short stable hash over prompt texts and settings (JSON with sorted keys, so dict order is moot)."""
    blob = json.dumps([PROMPT_VERSION, *parts], sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def v_merge_prompt(frame_captions: list[str], middle: str) -> str:
    lines = "\n".join(f"{i + 1}. {c}" for i, c in enumerate(frame_captions))
    return V_MERGE.format(frames=lines or "(none)", middle=middle or "(none)")


def av_prompt(visual: str, audio: str) -> str:
    return AV.format(visual=visual or "(none)", audio=audio or "(none)")


def avs_prompt(visual: str, audio: str, speech: str) -> str:
    return AVS.format(visual=visual or "(none)", audio=audio or "(none)", speech=speech or "(none)")


def translate_prompt(text: str, lang: str) -> str:
    return TRANSLATE.format(text=text, lang=lang)
