"""Checkpoints that cannot run code: every file rlfw writes loads with the safe loader, and a
checkpoint whose pickle would run code is refused by ``rlfw.evaluate``, ``resume=`` and
``rlfw.load`` with one line, without running it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from rlfw.errors import ConfigError
from rlfw.training.checkpoint import safe_load
from rlfw.training.loop import TrainLoop

from .conftest import TINY, run_cli


class _Payload:
    """Unpickling this creates the file ``path`` (what a malicious checkpoint would do)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished tiny FetchReach run with its buffer saved."""
    d = tmp_path_factory.mktemp("run")
    from rlfw.config.preflight import compose_config

    TrainLoop(compose_config([*TINY, "train.epochs=1", "train.save_buffer=true", "noise=ou"]), d).run()
    # the run directory the CLI would have: its saved config
    (d / ".hydra").mkdir(exist_ok=True)
    ckpt = torch.load(d / "checkpoints" / "last.pt", weights_only=True)
    import yaml

    (d / ".hydra" / "config.yaml").write_text(yaml.safe_dump(ckpt["config"]))
    (d / "clean.pt").write_bytes((d / "checkpoints" / "last.pt").read_bytes())
    return d


def test_every_checkpoint_file_loads_with_weights_only(run_dir):
    for name in ("last.pt", "buffer.pt"):
        state = torch.load(run_dir / "checkpoints" / name, weights_only=True)
        assert state["epoch" if name == "buffer.pt" else "counters"]


def _poison(run_dir: Path, marker: Path) -> None:
    state = torch.load(run_dir / "clean.pt", weights_only=True)
    state["extra"] = _Payload(marker)
    torch.save(state, run_dir / "checkpoints" / "last.pt")


@pytest.mark.parametrize("entry", ["evaluate", "resume", "load"])
def test_a_checkpoint_that_would_run_code_is_refused(run_dir, tmp_path, entry):
    marker = tmp_path / "pwned"
    _poison(run_dir, marker)
    # the payload is real: an unsafe load would create the file
    torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
    assert marker.exists()
    marker.unlink()
    if entry == "load":
        import rlfw

        with pytest.raises(ConfigError, match="refused"):
            rlfw.load(run_dir)
    else:
        if entry == "evaluate":
            import subprocess
            import sys

            proc = subprocess.run([sys.executable, "-m", "rlfw.evaluate", f"run_dir={run_dir}", "episodes=1"],
                                  capture_output=True, text=True, timeout=300,
                                  env=dict(os.environ, PYTHONWARNINGS="ignore"))  # fmt: skip
        else:
            proc = run_cli([f"resume={run_dir}", "train.epochs=2"], cwd=tmp_path)
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "Warn" not in ln and "deprecat" not in ln]
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert len(lines) == 1 and "refused" in lines[0], lines
        assert "Traceback" not in proc.stderr + proc.stdout
    assert not marker.exists()
    assert json.loads((run_dir / "status.json").read_text())["status"] == "finished"


def test_a_truncated_checkpoint_is_one_line(tmp_path):
    path = tmp_path / "last.pt"
    torch.save({"a": torch.zeros(1000)}, path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ConfigError, match="truncated or corrupt"):
        safe_load(path)


def test_resume_falls_back_to_the_previous_checkpoint_when_the_newest_is_truncated(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli([*TINY, "train.epochs=3", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ckpts = run_dir / "checkpoints"
    assert torch.load(ckpts / "previous.pt", weights_only=True)["counters"]["epoch"] == 2
    last = ckpts / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 3])  # a copy cut short
    # evaluation falls back too, with one warning
    import rlfw

    assert rlfw.load(run_dir).env_id == "FetchReach-v4"
    resumed = run_cli([f"resume={run_dir}", "train.epochs=4"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "falling back to the previous checkpoint" in resumed.stderr + resumed.stdout
    import csv

    with (run_dir / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    # epoch 3 (after the checkpoint actually loaded) was dropped and trained again: every
    # epoch exactly once
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert torch.load(last, weights_only=True)["counters"]["epoch"] == 4


def test_both_checkpoints_unreadable_is_one_line(tmp_path):
    for name in ("last.pt", "previous.pt"):
        (tmp_path / name).write_bytes(b"not a checkpoint")
    from rlfw.training.checkpoint import load_latest

    with pytest.raises(ConfigError, match="previous checkpoint too") as err:
        load_latest(tmp_path)
    assert "\n" not in str(err.value)


def test_a_nan_loss_stops_the_run_and_resume_continues(compose, tmp_path):
    """The divergence guard: a NaN reward injected into one batch mid-run makes the critic loss
    NaN; the run stops with status failed naming the update, writes no non-finite checkpoint,
    and ``resume=`` continues from the last good one."""
    from rlfw.errors import TrainingDiverged

    cfg = compose([*TINY, "train.epochs=3"])
    loop = TrainLoop(cfg, tmp_path)
    sample = loop.buffer.sample
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        batch = sample(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 25:  # epoch 3 runs updates 21-30 (2 cycles x 5 updates an epoch)
            batch.reward[:] = float("nan")
        return batch

    loop.buffer.sample = poisoned
    with pytest.raises(TrainingDiverged, match="update 25") as err:
        loop.run()
    assert "\n" not in str(err.value) and "resume=" in str(err.value)
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["status"] == "failed" and "update 25" in status["error"]
    for f in (tmp_path / "checkpoints").glob("*.pt"):
        state = torch.load(f, weights_only=True)
        tensors = [t for m in state["agent"].values() if isinstance(m, dict) for t in m.values()
                   if isinstance(t, torch.Tensor) and t.is_floating_point()]  # fmt: skip
        assert tensors and all(torch.isfinite(t).all() for t in tensors), f
        assert state["counters"]["epoch"] < 3
    import yaml

    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text(yaml.safe_dump(torch.load(
        tmp_path / "checkpoints" / "last.pt", weights_only=True)["config"]))  # fmt: skip
    resumed = run_cli([f"resume={tmp_path}"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "finished"
    import csv

    with (tmp_path / "metrics.csv").open() as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2, 3]


# Each case: the command line, a fragment of the one error line. Every one must exit 2 with
# one line, no traceback, and leave no run directory (nothing started).
BAD_INPUTS = [
    (["train.device=cuda"], "has no CUDA device"),
    (["train.device=cuda:3"], "train.device=cuda:3"),
    (["train.workers=64"], "train.workers=64 is more than"),
    (["env.max_episode_steps=0"], "env.max_episode_steps=0 is out of range"),
    (["env.max_episode_steps=-5"], "env.max_episode_steps=-5 is out of range"),
    (["train.epochs=0"], "train.epochs=0 is out of range"),
    (["train.steps_per_cycle=-1"], "train.steps_per_cycle=-1 is out of range"),
    (["eval.episodes=-1"], "eval.episodes=-1 is out of range"),
    (["noise=ou", "noise.mu=5"], "noise.mu=5.0 is out of range"),
    (["noise=ou", "noise.theta=0"], "noise.theta=0.0 is out of range"),
    (["noise=noisynet", "noise.sigma0=-1"], "noise.sigma0=-1.0 is out of range"),
    (["noise=noisynet", "noise.resample=never"], "unknown noise.resample 'never'"),
    (["noise.sigma=-0.1"], "noise.sigma=-0.1 is out of range"),
    (["noise.random_eps=1.5"], "noise.random_eps=1.5 is out of range"),
    (["env=Hopper-v4", "algo.clip_return=true"], "algo.clip_return=true"),
    (["env.id=FetchSlide-v3"], "env.id 'FetchSlide-v3' is not registered"),
    (["env.id=NoSuchEnv-v0"], "env.id 'NoSuchEnv-v0' is not a registered Gymnasium id"),
    (["env.kwargs.nosuch=1"], "env.kwargs.nosuch: FetchReach-v4's constructor takes no such argument"),  # no + needed
    (["algo.preact_l2=-1"], "algo.preact_l2=-1.0 is out of range"),
    (["algo.gamma=1.5"], "algo.gamma=1.5 is out of range"),
    (["buffer=per", "buffer.beta0=2"], "buffer.beta0=2.0 is out of range"),
    (["buffer.sampler=prio"], "unknown buffer.sampler 'prio'"),
    (["logger=wandb", "logger.mode=cloud"], "unknown logger.mode 'cloud'"),
    (["train.batch_size=512", "buffer.capacity=256"], "larger than buffer.capacity=256"),
    (["env=Hopper-v4", "buffer=her"], "buffer.relabel=her needs a goal env"),
    (["hydra.run.dir=/proc/version/run"], "is a file, not a directory"),
]


@pytest.mark.parametrize(("args", "expected"), BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2_nothing_started(tmp_path, args, expected):
    if args[0].startswith("train.device=cuda") and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    run_dir = tmp_path / "run"
    extra = [] if any(a.startswith("hydra.run.dir=") for a in args) else [f"hydra.run.dir={run_dir}"]
    proc = run_cli([*args, *extra], cwd=tmp_path, timeout=120)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("rlfw: error: "), lines
    assert expected in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not run_dir.exists() and not (tmp_path / "outputs").exists()


def test_a_failed_csv_write_leaves_no_partial_row(tmp_path, monkeypatch):
    """A full disk mid-row: the file is cut back to its last complete row and the error raised."""
    import errno

    from rlfw.training.csvfiles import CsvLog

    log = CsvLog(tmp_path / "m.csv", ["a", "b"])
    log.write([{"a": 1, "b": 2}])
    good = (tmp_path / "m.csv").read_text()
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        log.write([{"a": 3, "b": 4}, {"a": 5, "b": 6}])
    monkeypatch.setattr(os, "fsync", real_fsync)
    log.close()
    assert (tmp_path / "m.csv").read_text() == good


@pytest.mark.parametrize(("world", "signalled", "status"), [(2, True, "interrupted"), (2, False, "failed"),
                                                           (1, True, "failed")])  # fmt: skip
def test_a_collective_that_fails_after_a_stop_signal_is_an_interruption(compose, tmp_path, world, signalled,
                                                                        status):  # fmt: skip
    """With several workers, a second stop signal makes one worker stop at once and its peers'
    next all-reduce fail ("connection closed by peer"): a failure that follows a stop signal
    marks the run ``interrupted`` (resumable), not ``failed``. Without a stop signal, or with one
    worker (where no peer can fail), an error stays a failure. The peer's failure is simulated
    in-process: the second epoch receives SIGTERM, then raises."""
    import signal

    loop = TrainLoop(compose([*TINY, "train.epochs=3"]), tmp_path)
    loop.ctx.world = world
    epoch = loop.train_epoch

    def peer_gone():
        if loop.epoch == 1:
            if signalled:
                loop._stop_signal = int(signal.SIGTERM)
            raise RuntimeError("[gloo] Connection closed by peer")
        return epoch()

    loop.train_epoch = peer_gone
    with pytest.raises(RuntimeError, match="closed by peer"):
        loop.run()
    assert json.loads((tmp_path / "status.json").read_text())["status"] == status
