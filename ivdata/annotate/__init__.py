"""VidCap annotation models (InternVid2's caption engine), one file per backend family.

asr.py (S: speech + language id, translate.py for non-English), audio_caption.py (A),
frame_caption.py (V: ~1 fps frame captions + the middle frame, merged), fuse.py (AV, AVS: LLM fusion),
prompts.py (prompt texts + stable hashes), audio.py (16 kHz audio, silence), config.py (recipe dataclasses).
Every model loads from a local path; nothing downloads at run time. The manifest side is
ivdata/stages/annotate.py.
"""
