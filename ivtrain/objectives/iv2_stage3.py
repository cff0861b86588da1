"""InternVideo2 stage 3: the video encoder connected to a causal LLM through a QFormer, instruction-tuned with LoRA
(the VideoChat2 lineage, which InternVideo2-Chat follows).

Read top to bottom against the papers (VideoChat2's instruction tuning; InternVideo2 Sec. 3.3):

1. A sample is a clip (or an image, a one-frame clip) and its conversation (`K.conversations.json`: human and gpt
   turns, the media placeholder in a human turn); with `caption_kinds`, a sample without one becomes a one-turn
   conversation whose answer is its caption. In HD mode (`hd_tiles` N) the clip is cut into up to N sub-videos of
   the base resolution tiled by its aspect ratio, plus one global view (ivtrain.data.hd).
2. The conversation is rendered by the LLM's own chat template and tokenized in the loader's workers; only the
   answers carry labels (ivtrain.data.conversation). The QFormer reads the instruction (the system turn, else the
   first question), as InstructBLIP.
3. Vision tower (from an earlier stage's export; frozen or trained) -> LayerNorm -> QFormer (32 + 64 learned
   queries, cross-attention every 2nd layer) -> linear projection: each view's query outputs are its LLM tokens,
   placed where the media was (ivtrain.models.videochat).
4. The LLM (frozen, LoRA adapters on the attention and MLP projections) scores the sequence; the loss is the cross
   entropy of the answer tokens.

Frozen parts (the LLM's weights, and the vision tower or QFormer when their switch says so) stay out of the optimizer
and the checkpoints and are rebuilt from their sources on resume. The export holds the vision tower (`encoder`),
the bridge (LayerNorm, QFormer, queries, projection: `bridge`) and the adapters (`lora`); the LLM stays where
`llm.path` points, and `iv export model --merge-lora` folds the adapters into a copy of it.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from ivtrain.config import ConfigError, Recipe
from ivtrain.data.conversation import MediaMarkers, check_template
from ivtrain.data.spec import CaptionSpec, ConversationSpec, SampleSpec, VideoSpec
from ivtrain.export import load_artifact, read_export
from ivtrain.models.llm import LLMConfig, is_lora_key, llm_dtype, llm_flops, load_llm, load_llm_tokenizer
from ivtrain.models.qformer import QFormerConfig, load_qformer
from ivtrain.models.videochat import VideoChat
from ivtrain.objectives.base import Objective, Tower
from ivtrain.objectives.iv2_stage3_batch import TextSettings, collate, model_inputs, sequence_lengths

BRIDGE = ("vision_layernorm.", "qformer.", "query_tokens", "extra_query_tokens", "project_up.")


@dataclass
class VisionSettings:
    init: str = ""                   # a run directory whose export holds an encoder (stage 2; any objective's)
    freeze: bool = False             # the tower and its LayerNorm stay as loaded
    layer: int = -1                  # the block whose tokens the QFormer reads (-2: the one before the last)
    lr_mult: float = 1.0
    checkpoint_activations: bool = False
    # stochastic depth of the tower here, whatever the stage-2 export it comes from trained with (the release's
    # stage 3 builds the vision encoder with drop_path_rate 0)
    drop_path: float = 0.0


@dataclass
class BridgeSettings(QFormerConfig):
    freeze: bool = False             # the QFormer and its queries stay as loaded (the projection still trains)


@dataclass
class Stage3Config:
    vision: VisionSettings = field(default_factory=VisionSettings)
    qformer: BridgeSettings = field(default_factory=BridgeSettings)
    llm: LLMConfig = field(default_factory=LLMConfig)
    init: str = ""                   # a stage-3 run (or `iv export model` dir): vision, bridge, adapters from it
    max_text_len: int = 512          # LLM text tokens per sample (vision tokens not counted)
    hd_tiles: int = 0                # > 0: HD mode, up to this many sub-videos + a global view
    images: bool = True              # image samples (one-frame clips) are taken too
    video_markers: list[str] = field(default_factory=lambda: ["<Video>", "</Video>"])
    image_markers: list[str] = field(default_factory=lambda: ["<Image>", "</Image>"])
    caption_kinds: list[str] = field(default_factory=list)   # captions that stand in for a missing conversation
    caption_prompt: str = "Describe the video in detail."


class IV2Stage3(Objective):
    name = "iv2_stage3"
    Config = Stage3Config
    prepare_name = "prepare"
    throughput_unit = "tokens"

    @classmethod
    def validate(cls, recipe: Recipe) -> None:
        cfg = recipe.section
        for key, value in (("llm.path", cfg.llm.path), ("qformer.bert", cfg.qformer.bert)):
            if not value:
                raise ConfigError(f"iv2_stage3.{key} is not set")
        if not (cfg.vision.init or cfg.init):
            raise ConfigError("iv2_stage3.vision.init is not set: a run directory whose export holds the vision "
                              "tower (stage 2), or iv2_stage3.init: a stage-3 run")
        if len(cfg.video_markers) != 2 or len(cfg.image_markers) != 2:
            raise ConfigError("iv2_stage3.video_markers and image_markers hold two strings: before and after")
        if cfg.max_text_len < 1 or cfg.hd_tiles < 0 or cfg.qformer.queries < 1 or cfg.qformer.extra_queries < 0:
            raise ConfigError("iv2_stage3: max_text_len and qformer.queries must be positive, hd_tiles and "
                              "qformer.extra_queries not negative")
        if cfg.llm.lora.r < 0:
            raise ConfigError("iv2_stage3.llm.lora.r cannot be negative (0: no adapters)")

    def __init__(self, recipe: Recipe, device: torch.device, dist=None):
        super().__init__(recipe, device, dist)
        cfg, data = recipe.section, recipe.data
        self.text = self.text_settings(cfg)   # a missing directory or unusable chat template fails here
        self.trainable = build_videochat(cfg, data.num_frames, data.image_size, recipe.train.bf16)
        self.trainable.to(device).train()

    @staticmethod
    def text_settings(cfg: Stage3Config) -> TextSettings:
        """How samples are tokenized; the LLM's chat template is checked here (and whether it has a system role)."""
        markers = MediaMarkers(tuple(cfg.video_markers), tuple(cfg.image_markers))
        fold = check_template(load_llm_tokenizer(cfg.llm.path, cfg.llm.chat_template), markers)
        return TextSettings(cfg.llm.path, cfg.llm.chat_template, cfg.qformer.bert if cfg.qformer.text_input else "",
                            cfg.max_text_len, cfg.qformer.max_text_len, markers, cfg.caption_prompt, fold)

    def sample_spec(self) -> SampleSpec:
        cfg, data = self.recipe.section, self.recipe.data
        captions = (("caption", CaptionSpec(kinds=tuple(cfg.caption_kinds), required=False)),) \
            if cfg.caption_kinds else ()
        return SampleSpec(video=VideoSpec(frames=data.num_frames, size=data.image_size, hd_tiles=cfg.hd_tiles),
                          images=cfg.images, captions=captions,
                          conversation=ConversationSpec(required=not cfg.caption_kinds), per_sample=self.text)

    def collate(self, samples: list[dict], spec: SampleSpec) -> dict:
        return collate(samples, spec, self.text)

    def towers(self) -> list[Tower]:
        return [Tower(""), Tower("vision_encoder.", self.recipe.section.vision.lr_mult)]

    @torch.no_grad()
    def prepare(self, batch: dict) -> dict:
        """The model's inputs; a frozen vision tower runs here, without grad."""
        data = self.recipe.data
        inputs = model_inputs(batch, self.device, data.mean, data.std)
        if self.trainable.vision_frozen:
            inputs["vision_tokens"], inputs["vision_mask"] = self.trainable.vision_features(inputs["views"],
                                                                                           inputs["view_frames"])
        inputs["stats"] = {"text/truncated": batch["truncated"].mean(),
                           "text/answer_tokens_dropped": batch["answer_tokens_dropped"].mean()}
        return inputs

    def flops(self, batch: dict) -> dict[str, float]:
        text = batch["qformer_ids"].shape[1] if "qformer_ids" in batch else 0
        return stage3_flops(self.trainable, batch["view_frames"].tolist(), text,
                            sequence_lengths(batch, self.trainable.queries().shape[1]))

    def count(self, batch: dict) -> int:
        return sum(sequence_lengths(batch, self.trainable.queries().shape[1]))

    def export(self, state_dict: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
        return split_export(state_dict)

    def encoder_config(self) -> dict:
        data = self.recipe.data
        return {**self.trainable.vision_encoder.config(), "mean": data.mean, "std": data.std}

    @classmethod
    def encoder_config_of(cls, recipe: Recipe) -> dict:
        cfg, data = recipe.section, recipe.data
        config = read_export(cfg.init or cfg.vision.init)["encoder"]
        return {**config, "num_frames": data.num_frames, "img_size": data.image_size,
                "mean": data.mean, "std": data.std}

    @classmethod
    def write_tiny_assets(cls, out) -> dict[str, str]:
        """The tiny recipes' LLM (Llama architecture, byte-level BPE, a chat template), QFormer (BERT) and a vision
        tower to start from (a random tiny InternVideo2 as a run directory, for runs without an earlier stage)."""
        from pathlib import Path

        from ivtrain.tiny_chat import save_tiny_llm, save_tiny_qformer, save_tiny_vision_run

        out = Path(out)
        return {"tiny_llm": str(save_tiny_llm(out / "tiny_llm")),
                "tiny_qformer": str(save_tiny_qformer(out / "tiny_qformer")),
                "tiny_vision": str(save_tiny_vision_run(out / "tiny_vision"))}


def stage3_flops(model: VideoChat, view_frames: list[int], qformer_text: int, sequences: list[int]) -> dict:
    """FLOPs of a batch of views (their frame counts) and LLM sequences (their lengths): trained parts forward +
    backward (3x forward); the frozen LLM forward and a backward to its inputs (2x); a frozen tower forward only."""
    enc, qformer = model.vision_encoder, model.qformer
    queries = model.queries().shape[1]
    per_frame = enc.grid[1] * enc.grid[2]
    vision = bridge = 0.0
    for t in view_frames:
        tokens = max(1, t // enc.cfg.tubelet_size) * per_frame
        vision += enc.flops_per_sample(tokens)
        bridge += qformer.flops(queries, qformer_text, tokens + 1)
    llm = sum(llm_flops(model.lm, n) for n in sequences)
    return {"vision": (1.0 if model.vision_frozen else 3.0) * vision, "qformer": 3.0 * bridge, "llm": 2.0 * llm}


def split_export(state_dict: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """The model's weights as the export's artifacts: `encoder` (the vision tower under its own names), `bridge`
    (released names) and `lora` (the adapters, under the model's names); the LLM's own weights are left out."""
    encoder = {k[len("vision_encoder."):]: v for k, v in state_dict.items() if k.startswith("vision_encoder.")}
    bridge = {k: v for k, v in state_dict.items() if k.startswith(BRIDGE)}
    lora = {k: v for k, v in state_dict.items() if k.startswith("lm.") and is_lora_key(k)}
    return {"encoder": encoder, "bridge": bridge, "lora": lora}


def build_videochat(cfg: Stage3Config, num_frames: int, image_size: int, bf16: bool = False,
                    llm_path: str | None = None) -> VideoChat:
    """The stage-3 model of a recipe section: vision tower, QFormer and LLM from their sources, then (with
    `cfg.init`) every trained part from a stage-3 export; the freeze switches applied. llm_path: another copy of the
    LLM (an exported model's merged directory, then loaded without adapters)."""
    from ivtrain.export import load_encoder

    source = cfg.init or cfg.vision.init
    encoder, _ = load_encoder(source, num_frames=num_frames, img_size=image_size,
                              checkpoint_activations=cfg.vision.checkpoint_activations, drop_path=cfg.vision.drop_path)
    qformer, _ = load_qformer(cfg.qformer, encoder.cfg.embed_dim)
    llm = cfg.llm if llm_path is None else replace(cfg.llm, path=llm_path, lora=replace(cfg.llm.lora, r=0))
    lm = load_llm(llm, llm_dtype(bf16))
    model = VideoChat(encoder, qformer, lm, cfg.qformer.queries, cfg.qformer.extra_queries, cfg.vision.layer)
    if cfg.init:
        load_stage3(model, cfg.init, adapters=llm_path is None)
    if cfg.vision.freeze:
        model.vision_encoder.requires_grad_(False)
        model.vision_layernorm.requires_grad_(False)
    if cfg.qformer.freeze:
        model.qformer.requires_grad_(False)
        model.query_tokens.requires_grad_(False)
        if hasattr(model, "extra_query_tokens"):
            model.extra_query_tokens.requires_grad_(False)
    return model


def load_stage3(model: VideoChat, run_dir: str, adapters: bool = True) -> None:
    """The bridge and (with `adapters`) the LoRA weights of a stage-3 export into `model`, every tensor by name and
    shape (the vision tower came from the same export through load_encoder)."""
    from ivtrain.convert import ConversionError, compare

    meta = read_export(run_dir)
    if meta["objective"] != IV2Stage3.name:
        raise ConversionError(f"{run_dir} is a {meta['objective']} run, not a stage-3 one")
    want = {k: v.shape for k, v in model.state_dict().items() if k.startswith(BRIDGE)}
    parts = [load_artifact(run_dir, "bridge")]
    if adapters:
        want.update({k: v.shape for k, v in model.state_dict().items() if is_lora_key(k)})
        parts.append(load_artifact(run_dir, "lora"))
    given = {k: v for part in parts for k, v in part.items()}
    report = compare(given, want)
    if not report.ok:
        raise ConversionError(f"{run_dir} does not fit this stage-3 model:\n{report}")
    model.load_state_dict(given, strict=False)
