"""One run lifecycle for every way of starting a run (issue 31: the CLI, the API, resume, a SLURM
restart, train.workers, a tuning trial, a federated client, a torchrun group): each one's run holds
the run directory's lock while it trains, gets the built-in callbacks (a probe added to
:func:`rlfw.callbacks.make_callbacks` by ``tests/lifecycle_probe/sitecustomize.py`` sees its
start and end, with the lock held at both) and ends with the evaluation of what it delivers
(``evaluation.json``, and the ``delivered`` line last in the log where the entry point logs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import TINY

PROBE = Path(__file__).resolve().parent / "lifecycle_probe"
SHORT = [a for a in TINY if not a.startswith("train.epochs")] + ["train.epochs=1", "logger.progress=lines"]


def _run(cmd: list[str], cwd: Path, timeout: float = 600, **extra_env: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONWARNINGS="ignore", HYDRA_FULL_ERROR="0", RLFW_LIFECYCLE_PROBE="1",
               RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO="0", **extra_env)  # fmt: skip
    env["PYTHONPATH"] = os.pathsep.join([str(PROBE), *filter(None, [os.environ.get("PYTHONPATH")])])
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stderr[-4000:]
    return res


def _probe(run_dir: Path) -> list[dict]:
    path = run_dir / "probe.jsonl"
    assert path.is_file(), f"the built-in callbacks never ran in {run_dir}"
    return [json.loads(line) for line in path.read_text().splitlines()]


def check_lifecycle(run_dir: Path, starts: int = 1) -> None:
    """The probe started and ended ``starts`` times, the lock held each time, the run
    finished, and its delivered policy was evaluated (``evaluation.json``)."""
    rows = _probe(run_dir)
    assert [r["event"] for r in rows] == ["start", "end"] * starts, rows
    assert all(r["lock_held"] for r in rows), rows  # held while the callbacks run (any process)
    assert rows[-1]["status"] == "finished", rows
    summary = json.loads((run_dir / "evaluation.json").read_text())
    assert summary["episodes"] >= 1 and summary["source"] == "final evaluation of the run"
    assert not _lock_held_now(run_dir)  # released when the run ended


def _lock_held_now(run_dir: Path) -> bool:
    import errno
    import fcntl

    fd = os.open(run_dir / ".rlfw.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        return err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK)
    finally:
        os.close(fd)
    return False


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "rlfw", *args]


def test_the_cli_and_the_api_share_the_lifecycle(tmp_path):
    cli = tmp_path / "cli"
    _run(_cli(*SHORT, f"hydra.run.dir={cli}"), tmp_path)
    check_lifecycle(cli)
    last = (cli / "rlfw.log").read_text().strip().splitlines()[-1]
    assert last.split(" - ", 1)[-1].startswith("delivered best.pt (epoch 1): success "), last
    api = tmp_path / "api"
    _run([sys.executable, "-c", "import sys, rlfw; rlfw.train(sys.argv[1:])", *SHORT, f"hydra.run.dir={api}"], tmp_path)
    check_lifecycle(api)


def test_a_probe_that_the_lifecycle_skips_is_seen_missing(tmp_path):
    """The check can fail: a loop built without the built-in callbacks leaves no probe."""
    run = tmp_path / "bare"
    code = ("import sys; from rlfw.config.preflight import compose_config; from rlfw.training.loop import TrainLoop; "
            "TrainLoop(compose_config(sys.argv[2:]), sys.argv[1]).run()")  # fmt: skip
    _run([sys.executable, "-c", code, str(run), *SHORT], tmp_path)
    with pytest.raises(AssertionError, match="never ran"):
        check_lifecycle(run)


@pytest.mark.slow
def test_resume_and_a_slurm_restart_go_through_the_lifecycle(tmp_path):
    run = tmp_path / "run"
    _run(_cli(*SHORT, f"hydra.run.dir={run}"), tmp_path)
    _run(_cli(f"resume={run}", "train.epochs=2"), tmp_path)  # a resumed run: one more epoch
    check_lifecycle(run, starts=2)
    assert json.loads((run / "evaluation.json").read_text())["checkpoint_epoch"] <= 2
    restarted = tmp_path / "restarted"
    _run(_cli(*SHORT, f"hydra.run.dir={restarted}"), tmp_path)
    (restarted / "evaluation.json").unlink()
    # SLURM requeues the same command: it continues from the run directory's checkpoint
    _run(_cli(*SHORT, f"hydra.run.dir={restarted}"), tmp_path, SLURM_RESTART_COUNT="1")
    check_lifecycle(restarted, starts=2)


@pytest.mark.slow
def test_workers_a_tuning_trial_and_a_federated_client_go_through_the_lifecycle(tmp_path):
    workers = tmp_path / "workers"
    _run(_cli(*SHORT, "train.workers=2", f"hydra.run.dir={workers}"), tmp_path)
    check_lifecycle(workers)
    tune = tmp_path / "tune"
    _run([sys.executable, "-m", "rlfw.tune", "tune.n_trials=1", "tune.startup_trials=1", f"tune.dir={tune}",
          "algo.tau=interval(0.001,0.05)", *SHORT], tmp_path)  # fmt: skip
    check_lifecycle(tune / "trial_0" / "seed_0")
    fed = tmp_path / "fed"
    pytest.importorskip("flwr")
    _run([sys.executable, "-m", "rlfw.federated", "federated.clients=[FetchPush-v4,FetchSlide-v4]", "federated.rounds=2",
          *[a for a in SHORT if not a.startswith("train.epochs")], f"hydra.run.dir={fed}"], tmp_path)  # fmt: skip
    for client in sorted((fed / "clients").iterdir()):
        check_lifecycle(client)  # one start and one end over both rounds


@pytest.mark.slow
def test_a_torchrun_group_goes_through_the_lifecycle(tmp_path):
    """Two ranks of one run: rank 0 holds the lock and runs the callbacks and the final evaluation."""
    run = tmp_path / "torchrun"
    short = [a for a in SHORT if not a.startswith("logger.")] + ["logger.plots=false"]
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "rlfw", *short,
          f"hydra.run.dir={run}"], tmp_path)  # fmt: skip
    check_lifecycle(run)
    assert len({r["pid"] for r in _probe(run)}) == 1  # one process (rank 0) ran the callbacks
