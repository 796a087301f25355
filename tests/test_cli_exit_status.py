"""One meaning of the exit status across the commands (README): 2 bad usage (a named file or
folder that does not exist, a malformed option), 1 a failed run (it exists but cannot be used).

The same two cases for every command that takes a model or checkpoint: a path that does not
exist, and a folder that exists but holds no model. `detect` is checked in tests/test_detect.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from biomamba.cli.app import app


@pytest.fixture
def recording(tmp_path):
    path = tmp_path / "rec.wav"
    sf.write(path, np.zeros(16000, np.float32), 16000)
    return path


# command line for a model argument M (and a recording R)
COMMANDS = {
    "info": ["info", "{M}"],
    "embed": ["embed", "{R}", "--model", "{M}", "--out", "{T}/emb"],
    "export": ["export", "{M}", "--out", "{T}/exp"],
    "eval": ["eval", "{M}", "{T}"],
    "train --init": ["train", "{T}", "--init", "{M}", "--out", "{T}/run", "--preset", "tiny"],
}


def invoke(command: str, model, recording, tmp_path):
    args = [a.format(M=model, R=recording, T=tmp_path) for a in COMMANDS[command]]
    return CliRunner().invoke(app, args)


@pytest.mark.parametrize("command", COMMANDS)
def test_a_model_path_that_does_not_exist_is_bad_usage(command, recording, tmp_path):
    result = invoke(command, tmp_path / "nowhere", recording, tmp_path)
    assert result.exit_code == 2, result.output
    assert "nowhere" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("command", ["info", "embed", "export"])
def test_a_folder_without_a_model_is_a_failed_run(command, recording, tmp_path):
    """(eval and train read their data first; their failed-run cases are in their own tests.)"""
    (tmp_path / "empty").mkdir()
    result = invoke(command, tmp_path / "empty", recording, tmp_path)
    assert result.exit_code == 1, result.output
    assert "empty" in result.output and "Traceback" not in result.output
