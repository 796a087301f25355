"""The README's code runs as written (issue 11, item 10).

Marker: a fenced ```python block is run by this test when the line just before its opening
fence is an HTML comment starting with `<!-- runnable` (GitHub does not render it), e.g.

    <!-- runnable: tests/test_readme.py runs this block -->
    ```python
    ...
    ```

Only Python blocks may carry the marker; shell blocks (the Quick start's pip install and detect,
which need the network or a user's files) are never run. Each marked block runs in a fresh
interpreter, in a folder where `recording.wav` is a real field recording (scikit-maad's
spinetail.wav), the input the README's blocks name.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = "<!-- runnable"
FENCE = re.compile(r"^```(\w*)\s*$")


def readme_blocks() -> list[tuple[int, str, bool, str]]:
    """(line of the opening fence, language, marked runnable, code) of every fenced block."""
    lines = README.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        start, language = i, match.group(1)
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        marked = start > 0 and lines[start - 1].strip().startswith(MARKER)
        blocks.append((start + 1, language, marked, "\n".join(lines[start + 1 : end]) + "\n"))
        i = end + 1
    return blocks


def runnable_blocks() -> list[tuple[int, str]]:
    return [(line, code) for line, _, marked, code in readme_blocks() if marked]


def test_marker_only_on_python_blocks_and_the_api_block_carries_it():
    blocks = readme_blocks()
    assert blocks, "no fenced blocks found: the parser is broken"
    for line, language, marked, _ in blocks:
        assert not marked or language == "python", f"README.md:{line}: only Python blocks may be runnable"
    text = README.read_text()
    api = text[text.index("### Python API"):]
    api = api[: api.index("\n## ")]
    assert f"{MARKER}" in api and "```python" in api, "the Python API block must be marked runnable"
    assert "train" in api.split("```python")[0], "the Python API section must say it needs the train extra"
    quick = text[text.index("## Quick start"): text.index("## Running the tests")]
    assert MARKER not in quick, "the Quick start installs from the network: never run it"


@pytest.mark.parametrize("line, code", runnable_blocks(), ids=[f"README.md:{line}" for line, _ in runnable_blocks()])
def test_readme_block_runs(line, code, tmp_path, real_data):
    os.symlink(real_data / "maad" / "data" / "spinetail.wav", tmp_path / "recording.wav")
    script = tmp_path / "block.py"
    script.write_text(code)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path,
                            timeout=600)
    assert result.returncode == 0, f"README.md:{line} failed:\n{result.stderr}"


def test_model_class_without_torch_says_what_to_install():
    """The field install has no torch: `biomamba.BioMamba` says so in a sentence."""
    code = """
import sys
sys.modules["torch"] = None   # `import torch` now fails as it does where torch is not installed
import biomamba
for name in ("BioMamba", "Mamba2"):
    try:
        getattr(biomamba, name)
    except ImportError as e:
        assert type(e) is ImportError, type(e)
        print(e)
    else:
        raise SystemExit(name + " imported without torch")
try:
    from biomamba import BioMamba
except ImportError as e:
    print(e)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3 and all("needs PyTorch" in line and "bmamba[train]" in line for line in lines), lines
    assert lines[0].startswith("biomamba.BioMamba needs PyTorch")
