"""Process trees and Hydra's own errors as one line (issue 22, items 7, 8, 14): worker errors
surface as the single process's line, torchrun ranks with different configs are refused
naming the key, a failed sweep job is listed at the end, and Hydra-level mistakes stop with
exit status 2 before any job starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlfw.__main__ import check_hydra
from rlfw.distributed import free_port
from rlfw.errors import ConfigError
from tests.conftest import TINY, run_cli

SHORT = [*TINY, "train.epochs=1", "train.cycles_per_epoch=1"]


def test_a_worker_config_error_is_the_single_process_line(tmp_path):
    """HER on an env without goals is found while building: one line and exit 2, as with one
    process (four tracebacks before)."""
    args = [*SHORT, "env=gym", "env.id=Pendulum-v1", "buffer=her", f"hydra.run.dir={tmp_path / 'run'}"]
    one = run_cli(args, tmp_path, timeout=300)
    two = run_cli([*args, "train.workers=2"], tmp_path, timeout=300)
    assert one.returncode == two.returncode == 2, two.stdout[-2000:] + two.stderr[-2000:]
    both = two.stdout + two.stderr
    assert "Traceback" not in both, both[-3000:]
    assert both.count("needs a goal env") == 1, both[-3000:]


def test_torchrun_ranks_with_different_overrides_fail_naming_the_key(tmp_path):
    port = str(free_port())
    procs = []
    for rank, seed in ((0, 1), (1, 2)):
        env = dict(os.environ, PYTHONWARNINGS="ignore", RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=port)  # fmt: skip
        procs.append(subprocess.Popen([sys.executable, "-m", "rlfw", *SHORT, f"seed={seed}",
                                       f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))  # fmt: skip
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 2, err[-3000:]
        assert err.strip().splitlines() == [
            "rlfw: error: the ranks were started with different configs: seed (rank 0: 1 vs rank 1: 2); "
            "give every rank the same overrides"
        ], err[-3000:]
    assert not (tmp_path / "run" / "status.json").exists()  # nothing started: no status left running


def test_a_failed_sweep_job_is_listed_and_the_sweep_goes_on(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", *SHORT, "env=gym", "env.id=Pendulum-v1", "buffer=her,uniform", f"hydra.sweep.dir={sweep}",
                    "hydra.sweep.subdir=job${hydra.job.num}"], tmp_path, timeout=300)  # fmt: skip
    both = proc.stdout + proc.stderr
    assert proc.returncode == 1, both[-3000:]
    assert "Traceback" not in both, both[-3000:]
    failed = [ln for ln in proc.stderr.splitlines() if ln.startswith("rlfw: error: job ")]
    assert len(failed) == 1 and "job 0 (" in failed[0] and "needs a goal env" in failed[0], proc.stderr[-2000:]
    assert '"status": "finished"' in (sweep / "job1" / "status.json").read_text()  # the next job ran


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("buffer=hr", "unknown buffer 'hr'"),
        ("hydra/launcher=nope", "unknown hydra/launcher 'nope'"),
        ("hydra/launcher=ray_cluster", "hydra/launcher=ray_cluster needs a Hydra plugin that is not installed"),
        ("hydra/sweeper=nope", "unknown hydra/sweeper 'nope'"),
        ("hydra.run.dir=/tmp/\u00e9", "Hydra takes non-ASCII characters only in quotes"),
        ("hydra.run.dir=/tmp/${nope:x}", "hydra.run.dir does not resolve: Unsupported interpolation type nope"),
        ("hydra.run.dir=/tmp/${oc.env:RLFW_TEST_NOPE}", "hydra.run.dir does not resolve"),
        ("hydra.run.dir=/proc/nope", "hydra.run.dir=/proc/nope: cannot create a directory in /proc"),
        ("hydra.sweep.dir=/proc/nope", "hydra.sweep.dir=/proc/nope: cannot create a directory in /proc"),
    ],
)
def test_hydra_level_mistakes_are_one_config_error(override, expected):
    multirun = ["-m"] if override.startswith(("hydra/launcher=ray", "hydra.sweep")) else []
    with pytest.raises(ConfigError) as info:
        check_hydra([*multirun, override])
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_hydra_level_checks_pass_good_commands(tmp_path):
    check_hydra([f"hydra.run.dir={tmp_path}/a"])
    check_hydra([f'hydra.run.dir="{tmp_path}/\u00e9"'])
    check_hydra(["-m", "seed=0,1", f"hydra.sweep.dir={tmp_path}/s"])
    assert not list(Path(tmp_path).iterdir())  # the probe leaves nothing behind


def test_cfg_job_with_a_bad_option_is_one_line(tmp_path):
    proc = run_cli(["--cfg", "job", "buffer=hr"], tmp_path, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "rlfw: error: unknown buffer 'hr'; choose one of: her, nstep, per, uniform"
    ]
