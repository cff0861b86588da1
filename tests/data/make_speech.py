"""Make the spoken-English fixture for the real-ASR test (run once; its outputs are committed).

    python tests/data/make_speech.py

Speaks `speech_en.txt` with Debian's espeak-ng (`apt-get install -y espeak-ng`), resamples to 16 kHz
mono with PyAV and writes `speech_en.flac` plus `speech_en.json` (the text and where the speech starts
and ends, measured from the samples, for the segment-time check).
"""
from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import av
import numpy as np

HERE = Path(__file__).resolve().parent
RATE = 16000
LEAD_SILENCE_S = 1.0      # speech starts after a second of silence: VAD and timestamps must cope


def decode_16k(path: Path) -> np.ndarray:
    out = []
    with av.open(str(path)) as c:
        res = av.AudioResampler(format="flt", layout="mono", rate=RATE)
        for frame in c.decode(audio=0):
            out += [f.to_ndarray().reshape(-1) for f in res.resample(frame)]
        out += [f.to_ndarray().reshape(-1) for f in res.resample(None)]
    return np.concatenate(out).astype(np.float32)


def write_flac(samples: np.ndarray, path: Path) -> None:
    with av.open(str(path), "w", format="flac") as c:
        s = c.add_stream("flac", rate=RATE, layout="mono")
        pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = RATE
        for p in s.encode(frame):
            c.mux(p)
        for p in s.encode(None):
            c.mux(p)


def main() -> None:
    text = (HERE / "speech_en.txt").read_text().strip()
    with tempfile.TemporaryDirectory() as d:
        wav = Path(d) / "speech.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(wav), text], check=True)
        speech = decode_16k(wav)
    voiced = np.flatnonzero(np.abs(speech) > 0.01)
    speech = speech[voiced[0]: voiced[-1] + 1]
    samples = np.concatenate([np.zeros(int(LEAD_SILENCE_S * RATE), np.float32), speech,
                              np.zeros(int(0.5 * RATE), np.float32)])
    write_flac(samples, HERE / "speech_en.flac")
    meta = {"text": text, "rate": RATE, "speech_start_s": LEAD_SILENCE_S,
            "speech_end_s": round(LEAD_SILENCE_S + speech.size / RATE, 3), "duration_s": round(samples.size / RATE, 3),
            "made_with": "espeak-ng -v en-us -s 150"}
    (HERE / "speech_en.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(meta)


if __name__ == "__main__":
    main()
