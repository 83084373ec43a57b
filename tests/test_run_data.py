"""A run directory from someone else is data only (issue 33, the instances a second adversarial
pass found): interpolations cannot hide a module from the trust check, export and report never
write through planted links, malformed metadata and checkpoint contents are one line, and
env or storage settings that cannot work are refused before anything runs."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

import rlfw
from rlfw.errors import ConfigError

from .conftest import TINY

PENDULUM = ["env=gym", "env.id=Pendulum-v1", *TINY]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A finished two-epoch run: last.pt, previous.pt and best.pt."""
    root = tmp_path_factory.mktemp("base")
    return rlfw.train([*PENDULUM, f"hydra.run.dir={root / 'run'}"])


def _copy(base: Path, dest: Path, edit=None) -> Path:
    """A copy of ``base``; ``edit(state)`` changes every checkpoint's state."""
    shutil.copytree(base, dest)
    if edit is not None:
        for name in ("last.pt", "previous.pt", "best.pt"):
            path = dest / "checkpoints" / name
            state = torch.load(path, weights_only=True)
            edit(state)
            torch.save(state, path)
    return dest


@pytest.fixture
def evil(tmp_path, monkeypatch) -> Path:
    """A module that leaves a marker file when it is imported, on sys.path."""
    mod = tmp_path / "mods"
    mod.mkdir()
    marker = tmp_path / "PWNED"
    (mod / "evilmod.py").write_text(f"open({str(marker)!r}, 'a').write('imported')\nfrom gymnasium.envs.classic_control.pendulum import PendulumEnv\n")
    monkeypatch.syspath_prepend(str(mod))
    sys.modules.pop("evilmod", None)
    return marker


def test_an_interpolation_cannot_hide_a_module_from_the_trust_check(base, tmp_path, evil):
    def hide(state):
        state["config"]["env"]["id"] = "${hidden}"
        state["config"]["hidden"] = "evilmod:Pendulum-v1"

    run = _copy(base, tmp_path / "hidden", hide)
    from rlfw.export import export_policy

    with pytest.raises(ConfigError, match="imports evilmod"):
        rlfw.load(run)
    with pytest.raises(ConfigError, match="imports evilmod"):
        export_policy(run, "safetensors")
    assert not evil.exists()  # nothing of the run directory's code ran

    def broken(state):
        state["config"]["env"]["id"] = "${nosuch:x}"

    bad = _copy(base, tmp_path / "broken", broken)
    with pytest.raises(ConfigError, match="the run's config cannot be read"):
        rlfw.load(bad)
    (bad / ".hydra" / "config.yaml").write_text((bad / ".hydra" / "config.yaml").read_text().replace("id: Pendulum-v1", "id: ${nosuch:x}"))
    from rlfw.__main__ import resume

    with pytest.raises(ConfigError, match="cannot be read"):
        resume(str(bad), ["train.epochs=3"])


def test_export_and_report_never_write_through_a_planted_link(base, tmp_path):
    from rlfw.export import export_policy
    from rlfw.report import summarize

    run = _copy(base, tmp_path / "run")
    outside = tmp_path / "outside"
    outside.mkdir()
    (run / "export").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ConfigError, match="is a link"):
        export_policy(run, "safetensors")
    assert not list(outside.iterdir())
    (run / "export").unlink()
    (run / "export").mkdir()
    target = tmp_path / "target"
    for fmt, ext in (("torchscript", ".ts"), ("safetensors", ".safetensors")):
        target.write_text("ORIGINAL")
        tmp = run / "export" / f".policy_last{ext}.tmp"
        tmp.symlink_to(target)
        out = export_policy(run, fmt)
        assert target.read_text() == "ORIGINAL" and out.is_file() and not out.is_symlink(), fmt

    sweep = tmp_path / "sweep"
    shutil.copytree(base, sweep / "run")
    md, png = tmp_path / "md_target", tmp_path / "png_target"
    md.write_text("ORIGINAL")
    png.write_text("ORIGINAL")
    (sweep / "summary.md").symlink_to(md)
    (sweep / "summary.tmp.png").symlink_to(png)
    summarize([sweep], reps=50)
    assert md.read_text() == "ORIGINAL" and png.read_text() == "ORIGINAL"
    assert not (sweep / "summary.md").is_symlink() and not (sweep / "summary.png").is_symlink()


NESTED = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize(("file", "text", "expected"), [
    (".hydra/overrides.yaml", NESTED, "nested too deeply"),
    ("metrics.csv", "epoch,env_steps\n1," + "9" * 200_000 + "\n", "not a CSV rlfw wrote"),
    (".hydra/config.yaml", "x" * (2**20 + 1), "bytes, more than"),
], ids=["nested", "csv-field", "oversize"])  # fmt: skip  (short ids: the node id becomes PYTEST_CURRENT_TEST)
def test_malformed_run_metadata_is_one_line_in_the_report(base, tmp_path, file, text, expected):
    from rlfw.report import summarize

    sweep = tmp_path / "sweep"
    run = _copy(base, sweep / "run")
    (run / file).write_text(text)
    with pytest.raises(ConfigError) as err:
        summarize([sweep], reps=50)
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_unreadable_status_and_evaluation_files_are_warnings_not_tracebacks(base, tmp_path, caplog):
    from rlfw.report import summarize

    sweep = tmp_path / "sweep"
    run = _copy(base, sweep / "run")
    (run / "status.json").write_text(NESTED)
    (run / "evaluation.json").write_text(NESTED)
    with caplog.at_level("WARNING", logger="rlfw.report"):
        _, _, text = summarize([sweep], reps=50)
    assert "status.json unreadable (" in caplog.text and "nested too deeply" in caplog.text
    assert text.splitlines()[2].rstrip().endswith("| - |")  # no delivered figure from a broken file


@pytest.mark.parametrize("content", ["seed: 2001-01-01\n", "seed: " + NESTED + "\n"], ids=["date", "nested"])
def test_a_resume_repairs_malformed_metadata_instead_of_a_traceback(base, tmp_path, caplog, content):
    """A .hydra/config.yaml OmegaConf cannot hold (a YAML date, nesting past the recursion
    limit) is replaced by the checkpoint's config, an unreadable status.json is rebuilt: each
    with a warning line, as for any damaged file (README, Resume)."""
    from rlfw.__main__ import resume

    run = _copy(base, tmp_path / "run")
    config = run / ".hydra" / "config.yaml"
    config.write_text(config.read_text().replace("seed: 0\n", content))
    (run / "status.json").write_text(NESTED)
    with caplog.at_level("WARNING", logger="rlfw"):
        resume(str(run), ["train.epochs=3"])
    assert "using the config saved in the checkpoint" in caplog.text and "it is rebuilt" in caplog.text
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "finished" and status["epoch"] == 3


@pytest.mark.parametrize(("edit", "expected"), [
    (lambda s: s.update(counters={}), "counters are not an epoch"),
    (lambda s: s.update(agent="text"), "agent entry is a str"),
    (lambda s: s["config"].update(seed=torch.tensor([1.0])), "the run's config cannot be read"),
])  # fmt: skip
def test_checkpoint_contents_are_checked_and_last_pt_falls_back(base, tmp_path, edit, expected):
    from omegaconf import OmegaConf

    from rlfw.evaluate import EvaluateConfig, evaluate

    run = _copy(base, tmp_path / "run", edit)
    with pytest.raises(ConfigError) as err:
        evaluate(OmegaConf.structured(EvaluateConfig(run_dir=str(run), episodes=1)))
    assert expected in str(err.value) and "\n" not in str(err.value)
    # only last.pt damaged: loading falls back to previous.pt with a warning
    fallback = _copy(base, tmp_path / "fallback")
    state = torch.load(fallback / "checkpoints" / "last.pt", weights_only=True)
    edit(state)
    torch.save(state, fallback / "checkpoints" / "last.pt")
    assert rlfw.load(fallback).env_id == "Pendulum-v1"


def test_env_settings_that_cannot_work_are_refused_in_one_line(tmp_path, monkeypatch):
    from rlfw.config.preflight import preflight

    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    with pytest.raises(ConfigError, match=r"env\.kwargs\.max_episode_steps: set env\.max_episode_steps"):
        preflight(["++env.kwargs.max_episode_steps=0", *PENDULUM])
    with pytest.raises(ConfigError, match=r"env\.kwargs\.render_mode: rlfw sets it itself"):
        preflight(["++env.kwargs.render_mode=human", *PENDULUM])
    coin = ["env=gym", "env.id=CoinGoal-v0", "env.imports=[user_envs]", "buffer=her", *TINY]
    with pytest.raises(ConfigError, match=r"env.id 'CoinGoal-v0' cannot be made with env.kwargs p='abc': ValueError"):
        rlfw.train([*coin, "env.kwargs.p=abc", f"hydra.run.dir={tmp_path / 'run'}"])  # the constructor's float(p)


def test_tune_storages_that_cannot_hold_a_study_are_refused(tmp_path):
    pytest.importorskip("optuna")
    from rlfw.tune import open_storage, parse_tune

    with pytest.raises(ConfigError, match="names no database file"):
        parse_tune(["tune.storage=sqlite:///"])
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero"), tmp_path):
        with pytest.raises(ConfigError, match="not a regular file"):
            open_storage(f"journal:{path}")
    assert json.dumps(str(open_storage(f"journal:{tmp_path / 'ok.log'}")))  # a new file is fine


@pytest.mark.unit
def test_yaml_nesting_is_bounded_before_pyyaml_reads_it():
    """load_yaml refuses more than MAX_NESTING bracket levels by a linear count (PyYAML's scanner
    takes minutes on 100,000 levels) and still reads a file at the bound."""
    from rlfw.core.runfiles import MAX_NESTING, load_yaml

    at_bound = "[" * MAX_NESTING + "]" * MAX_NESTING
    assert load_yaml(f"a: {at_bound}", "ok.yaml") == {"a": json.loads(at_bound)}
    over = "[" * (MAX_NESTING + 1) + "]" * (MAX_NESTING + 1)
    with pytest.raises(ConfigError, match=f"more than {MAX_NESTING} levels"):
        load_yaml(f"a: {over}", "deep.yaml")
