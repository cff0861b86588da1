"""open_clip backends (semantic teacher, clip embedder) in child processes that can import torchvision;
see tests/open_clip_checks.py for why, and `make setup` for where open_clip comes from."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SITE = Path(os.environ.get("IVKIT_OPEN_CLIP_SITE", ROOT / ".venv" / "open_clip_site"))


@pytest.mark.parametrize("check", ["teacher", "objective", "embedder"])
def test_open_clip_backend(check, tmp_path):
    if not (SITE / "open_clip").is_dir():
        pytest.fail(f"open_clip is not installed at {SITE}: `make setup` installs it there")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SITE), str(ROOT)]), "OMP_NUM_THREADS": "1",
           "IVKIT_PROGRESS": "0"}
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "open_clip_checks.py"), check, str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    print(proc.stdout)
