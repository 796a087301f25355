#!/usr/bin/env bash
# The field install: `pip install .` alone (no torch) must run `bmamba detect` with the model
# shipped in the package. Builds a fresh venv, installs the base package (not editable), checks that
# torch is absent, and runs detect on a generated recording.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --upgrade pip
"$work/venv/bin/python" -m pip install --quiet .
if "$work/venv/bin/python" -c "import torch" 2>/dev/null; then
    echo "smoke: torch is installed by the base install; it must not be" >&2
    exit 1
fi
"$work/venv/bin/python" - "$work/rec.flac" <<'PY'
import sys
import numpy as np
import soundfile as sf
rng = np.random.default_rng(0)
t = np.arange(44100 * 20) / 44100
audio = 0.05 * rng.standard_normal(t.size) + 0.3 * np.sin(2 * np.pi * 3000 * t) * (np.sin(2 * np.pi * 0.5 * t) > 0)
sf.write(sys.argv[1], np.stack([audio, audio[::-1]], 1).astype(np.float32), 44100)
PY
(cd "$work" && "$work/venv/bin/bmamba" detect rec.flac --out out --report run.json -q)
"$work/venv/bin/python" - "$work" <<'PY'
import json, sys
from pathlib import Path
work = Path(sys.argv[1])
report = json.loads((work / "run.json").read_text())
assert report["processed"] == 1 and report["failed"] == 0, report
table = work / "out" / "rec.bmamba.selection.table.txt"
assert table.read_text().startswith("Selection\t"), table
print(f"smoke: torch-free install ran detect: {report['audio_s']} s of audio at {report['rtf']}x real time, "
      f"peak {report['peak_rss_mb']} MB, backend {report['backend']}")
PY
