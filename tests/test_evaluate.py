"""``python -m rlfw.evaluate``: success and return printed, an MP4 written, bad input in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from rlfw.training.loop import TrainLoop

from .conftest import TINY


@pytest.mark.parametrize("env", ["FetchReach-v4", pytest.param("PandaReach-v3", marks=pytest.mark.slow)])
def test_evaluate_prints_success_and_writes_mp4(compose, tmp_path, env):
    if env.startswith("Fetch") and os.environ.get("MUJOCO_GL") != "osmesa":
        pytest.skip("headless MuJoCo rendering needs libOSMesa (apt-get install libosmesa6)")
    cfg = compose([f"env={env}", *TINY, "train.epochs=1"])
    TrainLoop(cfg, tmp_path).run()
    proc = subprocess.run(
        [sys.executable, "-m", "rlfw.evaluate", f"run_dir={tmp_path}", "episodes=3", "video=true"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "3 episodes" in proc.stdout and "success rate" in proc.stdout and "return" in proc.stdout
    summary = json.loads((tmp_path / "evaluation.json").read_text())
    assert summary["episodes"] == 3 and 0.0 <= summary["success_rate"] <= 1.0
    video = tmp_path / "videos" / "eval_0.mp4"
    import imageio.v2 as imageio

    frames = [f for f in imageio.get_reader(video)]
    assert len(frames) == summary["video_frames"][0]
    # one frame per observation: the episode's steps + 1 (Fetch: 50 steps; Panda: <= 50)
    assert (len(frames) == 51) if env.startswith("Fetch") else (2 <= len(frames) <= 51)
    assert frames[0].ndim == 3 and frames[0].std() > 1.0  # a real image, not a blank frame


def test_evaluate_bad_input_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "rlfw.evaluate", "episodes=x"], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "episodes" in proc.stderr
