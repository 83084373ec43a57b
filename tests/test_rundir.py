"""One writer per run directory, fresh runs never into an existing run, default run
directories that never collide, no partial CSV row and a final status on a full disk, and
divergence advice that works (issue 22, items 2, 5, 10)."""

from __future__ import annotations

import csv
import errno
import json
import os
import subprocess
import sys

import pytest
import torch

from rlfw.errors import TrainingDiverged
from rlfw.training import rundir
from rlfw.training.csvfiles import CsvLog
from rlfw.training.loop import TrainLoop
from rlfw.training.rundir import acquire_run_lock, release_run_lock
from tests.conftest import TINY, run_cli


def _one_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = proc.stderr.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


def test_a_second_writer_is_refused_naming_the_holders_pid_and_a_killed_holder_never_blocks(tmp_path):
    run_dir = tmp_path / "run"
    acquire_run_lock(run_dir)  # this process plays the first writer
    try:
        for args in ([f"resume={run_dir}"], [*TINY, f"hydra.run.dir={run_dir}"]):
            err = _one_line(run_cli(args, cwd=tmp_path, timeout=120))
            assert f"in use by rlfw process {os.getpid()}" in err
        assert not (run_dir / "metrics.csv").exists() and not (run_dir / ".hydra").exists()
    finally:
        release_run_lock(run_dir)
    # a holder killed with SIGKILL leaves the lock file but not the lock
    code = (f"import os, signal; from rlfw.training.rundir import acquire_run_lock; acquire_run_lock({str(run_dir)!r}); "
            "os.kill(os.getpid(), signal.SIGKILL)")  # fmt: skip
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == -9
    assert (run_dir / ".rlfw.lock").exists()
    acquire_run_lock(run_dir)
    release_run_lock(run_dir)


def test_a_fresh_run_into_a_directory_holding_a_run_is_refused_with_the_resume_hint(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    saved = {".hydra/config.yaml": "seed: 7\n", "metrics.csv": "epoch\n1\n", "status.json": '{"status": "finished"}\n'}
    for name, text in saved.items():
        (run_dir / name).write_text(text)
    err = _one_line(run_cli([*TINY, f"hydra.run.dir={run_dir}"], cwd=tmp_path, timeout=120))
    assert "already holds a run" in err and f"python -m rlfw resume={run_dir}" in err
    assert {n: (run_dir / n).read_text() for n in saved} == saved  # Hydra never ran: nothing overwritten


def test_default_run_dirs_of_parallel_launches_differ(tmp_path):
    """Four processes started together resolve conf/config.yaml's default hydra.run.dir as
    ``python -m rlfw`` does: four directories."""
    code = (
        "import rlfw.__main__\n"
        "from hydra import compose\nfrom hydra.core.hydra_config import HydraConfig\n"
        "from rlfw.config.preflight import hydra_context\n"
        "with hydra_context():\n"
        "    full = compose(config_name='config', overrides=[], return_hydra_config=True)\n"
        "HydraConfig.instance().set_config(full)\n"
        "print(full.hydra.run.dir)\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(4)]
    dirs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert all(d.startswith("outputs/") and d.endswith("_td3_her_gaussian_FetchReach-v4") for d in dirs), dirs
    assert len(set(dirs)) == 4, dirs


def _enospc_after(n_bytes: int, real=os.write):
    """An ``os.write`` that writes ``n_bytes`` in all, then fails with ENOSPC (a disk filling up)."""
    left = {"n": n_bytes}

    def write(fd, data):
        if left["n"] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = real(fd, bytes(data[: left["n"]]))
        left["n"] -= n
        return n

    return write


def test_a_full_disk_leaves_no_partial_csv_row(tmp_path, monkeypatch):
    log = CsvLog(tmp_path / "episodes.csv", ["episode", "epoch", "return"])
    log.write([{"episode": 1, "epoch": 1, "return": -2.0}])
    before = (tmp_path / "episodes.csv").read_bytes()
    monkeypatch.setattr(os, "write", _enospc_after(9))  # part of the next rows fits, then the disk is full
    with pytest.raises(OSError) as err:
        log.write([{"episode": 2, "epoch": 1, "return": -3.5}, {"episode": 3, "epoch": 2, "return": -1.25}])
    assert err.value.errno == errno.ENOSPC
    monkeypatch.undo()
    log.close()
    assert (tmp_path / "episodes.csv").read_bytes() == before


def test_a_full_disk_ends_the_run_with_status_failed(compose, tmp_path, monkeypatch):
    """The disk fills during epoch 1's CSV write: the run fails, and status.json (which cannot be
    replaced by a new file any more) says failed, written in place."""
    loop = TrainLoop(compose([*TINY, "train.epochs=1"]), tmp_path)
    write = CsvLog.write

    def fill_disk(self, rows):
        monkeypatch.setattr(os, "write", _enospc_after(5))
        return write(self, rows)

    monkeypatch.setattr(CsvLog, "write", fill_disk)
    with pytest.raises(OSError):
        loop.run()
    monkeypatch.undo()
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["status"] == "failed" and "No space left" in status["error"]
    for name in ("metrics.csv", "episodes.csv"):
        text = (tmp_path / name).read_text()
        assert text.endswith("\n") and len(text.splitlines()) == 1  # the header only: no partial row


def _poison(loop: TrainLoop, at_update: int) -> None:
    sample = loop.buffer.sample
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        batch = sample(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == at_update:
            batch.reward[:] = float("nan")
        return batch

    loop.buffer.sample = poisoned


def test_divergence_before_any_checkpoint_advises_a_fresh_run_not_epoch_0(compose, tmp_path):
    loop = TrainLoop(compose([*TINY, "train.epochs=1"]), tmp_path)
    _poison(loop, 3)
    with pytest.raises(TrainingDiverged) as err:
        loop.run()
    msg = str(err.value)
    assert "epoch 0" not in msg and "resume=" not in msg
    assert "python -m rlfw " in msg and "algo.critic_lr=0.0005" in msg and "seed=1" in msg


def test_divergence_advice_resumes_with_lower_learning_rates_and_another_seed(compose, tmp_path):
    import torch
    from omegaconf import OmegaConf

    from rlfw.__main__ import resume

    cfg = compose([*TINY, "train.epochs=3"])
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    loop = TrainLoop(cfg, tmp_path)
    _poison(loop, 15)  # epoch 2 (10 updates an epoch): epoch 1's checkpoint is good
    with pytest.raises(TrainingDiverged) as err:
        loop.run()
    msg = str(err.value)
    assert f"resume={tmp_path} " in msg and "(epoch 1)" in msg
    command = msg.split("e.g.: ", 1)[1].split()
    assert command[:3] == ["python", "-m", "rlfw"]
    overrides = [a for a in command[3:] if not a.startswith("resume=")]
    assert "algo.actor_lr=0.0005" in overrides and "seed=1" in overrides
    resume(str(tmp_path), overrides)
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "finished"
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert state["agent"]["critic_opt"]["param_groups"][0]["lr"] == pytest.approx(0.0005)
    assert state["config"]["seed"] == 1
    with (tmp_path / "metrics.csv").open() as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2, 3]


def test_run_id_is_fixed_per_process():
    assert rundir.run_id() == rundir.run_id() and str(os.getpid()) in rundir.run_id()


def test_a_full_disk_while_saving_the_buffer_keeps_last_pt_and_leaves_no_temp_file(compose, tmp_path, monkeypatch):
    """train.save_buffer=true, and the disk fills while epoch 1's buffer is written (torch's
    writer raises a RuntimeError): one OSError (ENOSPC), last.pt of epoch 1 is there (written
    first), no *.tmp stays, and a resume continues from epoch 1 (issue 33, class 7)."""
    from rlfw.training import checkpoint as ckpt_module

    loop = TrainLoop(compose([*TINY, "train.epochs=2", "train.save_buffer=true"]), tmp_path)
    save = torch.save

    def full_on_buffer(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and "buffer" in obj:
            f.write(b"partial")
            raise RuntimeError("[enforce fail at inline_container.cc] . PytorchStreamWriter failed writing file "
                               "data/0: file write failed (No space left on device)")  # fmt: skip
        return save(obj, f, *args, **kwargs)

    monkeypatch.setattr(ckpt_module.torch, "save", full_on_buffer)
    with pytest.raises(OSError) as err:
        loop.run()
    monkeypatch.undo()
    assert err.value.errno == errno.ENOSPC and "buffer.pt" in str(err.value)
    ckpts = tmp_path / "checkpoints"
    assert not list(ckpts.glob("*.tmp")) and not (ckpts / "buffer.pt").exists()
    assert torch.load(ckpts / "last.pt", weights_only=True)["counters"]["epoch"] == 1
    resumed = TrainLoop(compose([*TINY, "train.epochs=2", "train.save_buffer=true"]), tmp_path)
    resumed.load_checkpoint(ckpts / "last.pt")
    assert resumed.epoch == 1
    resumed.run()
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "finished"
