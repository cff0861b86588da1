"""Joins recorded as soon as both sides exist: list captions onto clips, conversations onto their samples.

A source list gives the caption of a media item, or of a span of it, before any clip exists; an instruction
file names a video, an image or a clip file before that media is split or stored. These functions record the
join once the clip is there. Each is idempotent and touches only what is new, so every step that can create
one side calls them: ingest, split (through `ivdata.pipeline`), the images stage, instruction import, and
the shard stage before it reads captions and conversations.

- A caption of the whole media goes to every clip of it (an image has one); a caption of a span goes to the
  clip whose requested span is that span (to the millisecond, as clip ids round it). It lands in `captions`
  with the list's kind, the source as its model and an empty prompt hash.
- A conversation about an image links to the image's clip; about a span of a video, to the clip of that
  span; about a whole video, to a clip that covers it (starts at 0 and ends at the probed duration, within
  WHOLE_TOLERANCE_S: `split --method whole` makes one for videos up to --max-s).
"""
from __future__ import annotations

SPAN_TOLERANCE_S = 0.0005
WHOLE_TOLERANCE_S = 0.05


def attach_source_captions(m) -> int:
    """Copy source-list captions to the clips they describe; returns how many rows were written."""
    row = m.execute(f"""
        INSERT OR REPLACE INTO captions (clip_id, kind, text, lang, model, prompt_hash, extra, created_at)
        SELECT c.clip_id, s.kind, s.text, NULL, s.model, '', s.extra, s.created_at
        FROM source_captions s JOIN clips c ON c.video_id = s.video_id
        WHERE s.text IS NOT NULL AND c.status <> 'failed'
          AND (s.span = 'whole' OR (abs(c.start_s - s.start_s) <= {SPAN_TOLERANCE_S}
                                    AND abs(c.end_s - s.end_s) <= {SPAN_TOLERANCE_S}))
          AND NOT EXISTS (SELECT 1 FROM captions k WHERE k.clip_id = c.clip_id AND k.kind = s.kind
                          AND k.model = s.model AND k.prompt_hash = '' AND k.text = s.text)""").fetchone()
    return int(row[0]) if row else 0


def link_conversations(m) -> int:
    """Link conversations to the clip of the media they name, where it exists now; returns how many."""
    row = m.execute(f"""
        UPDATE conversations SET clip_id = x.clip_id FROM (
            SELECT cv.conversation_id, min(c.clip_id) AS clip_id
            FROM conversations cv JOIN clips c ON c.video_id = cv.video_id JOIN videos v ON v.video_id = cv.video_id
            WHERE cv.status = 'ok' AND cv.clip_id IS NULL AND c.status <> 'failed' AND (
                c.media = 'image'
                OR (cv.start_s IS NOT NULL AND abs(c.start_s - cv.start_s) <= {SPAN_TOLERANCE_S}
                    AND abs(c.end_s - cv.end_s) <= {SPAN_TOLERANCE_S})
                OR (cv.start_s IS NULL AND c.start_s <= {WHOLE_TOLERANCE_S}
                    AND abs(c.end_s - v.duration_s) <= {WHOLE_TOLERANCE_S}))
            GROUP BY 1) x
        WHERE conversations.conversation_id = x.conversation_id""").fetchone()
    return int(row[0]) if row else 0


def refresh_links(m) -> dict:
    """Both joins; the counts of what was new."""
    return {"captions_attached": attach_source_captions(m), "conversations_linked": link_conversations(m)}
