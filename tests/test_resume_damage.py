"""Resume on damaged or changed run directories (issue 22, item 6; item 11: no ``.hydra/``).

One tiny finished run is built per module; each case copies it, damages the copy one way and
resumes it in-process. A repairable case must finish the extra epoch with every epoch once in
metrics.csv and well-formed CSVs; a refused one must stop with one line naming the file or
key, before anything is built (the directory is left as it was)."""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from rlfw.__main__ import resume
from rlfw.errors import ConfigError
from rlfw.training.csvfiles import EPISODE_COLUMNS, metric_columns
from rlfw.training.loop import TrainLoop
from tests.conftest import TINY


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 2-epoch tiny FetchReach run with a saved buffer and Hydra's ``.hydra/``."""
    from rlfw.config.preflight import compose_config

    run_dir = tmp_path_factory.mktemp("base") / "run"
    overrides = [*TINY, "train.save_buffer=true"]
    cfg = compose_config(overrides)
    TrainLoop(cfg, run_dir).run()
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    return run_dir


@pytest.fixture(autouse=True)
def _restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for h in root.handlers[:]:
        if h not in handlers:
            root.removeHandler(h)
            h.close()
    root.setLevel(level)


def _edit(name: str, change):
    def damage(d: Path) -> None:
        p = d / name
        p.write_bytes(change(p.read_bytes()))

    return damage


def _rm(name: str):
    def damage(d: Path) -> None:
        p = d / name
        shutil.rmtree(p) if p.is_dir() else p.unlink()

    return damage


def _hidden_64(d: Path) -> None:  # the config no longer fits the checkpoint's networks
    p = d / ".hydra" / "config.yaml"
    cfg = yaml.safe_load(p.read_text())
    cfg["algo"]["actor_hidden"] = [64, 64]
    p.write_text(yaml.safe_dump(cfg))


def _nothing(d: Path) -> None:
    pass


# (case, damage, extra overrides, None = repaired and resumed | fragment of the one error line)
CASES = [
    ("empty status.json", _edit("status.json", lambda b: b""), [], None),
    ("truncated status.json", _edit("status.json", lambda b: b[:12]), [], None),
    ("invalid YAML config", _edit(".hydra/config.yaml", lambda b: b"algo: [unclosed\n  : : x"), [], None),
    ("no .hydra (hydra.output_subdir=null)", _rm(".hydra"), [], None),
    ("damaged metrics.csv header", _edit("metrics.csv", lambda b: b"ep\x00ch,garbage" + b[b.index(b"\n"):]), [], None),
    ("cut last row of episodes.csv", _edit("episodes.csv", lambda b: b[: b.rstrip(b"\n").rfind(b",") + 1]), [], None),
    ("corrupt buffer file", _edit("checkpoints/buffer.pt", lambda b: b[: len(b) // 3]), [], None),
    ("changed train.num_envs", _nothing, ["train.num_envs=4"], "train.num_envs=4 does not fit"),
    ("changed train.workers", _nothing, ["train.workers=2"], "train.workers=2 does not fit"),
    ("only best.pt left", lambda d: (_rm("checkpoints/last.pt")(d), _rm("checkpoints/previous.pt")(d)), [],
     "holds checkpoints/best.pt but neither last.pt nor previous.pt"),
    ("checkpoint does not fit the config", _hidden_64, [], "last.pt does not fit the run's config: algo.actor_hidden"),
    ("bad override", _nothing, ["logger.video_every=abc"], "logger.video_every"),
    ("unreadable metrics.csv", _edit("metrics.csv", lambda b: b"\xff\xfe\x00garbage\n1,2\n"), [], "metrics.csv"),
]


@pytest.mark.parametrize(("case", "damage", "extra", "refused"), CASES, ids=[c[0] for c in CASES])
def test_resume_repairs_or_refuses_a_damaged_run_dir(finished_run, tmp_path, case, damage, extra, refused, caplog):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    damage(run_dir)
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    if refused is not None:
        with pytest.raises(ConfigError) as err:
            resume(str(run_dir), ["train.epochs=3", *extra])
        assert refused in str(err.value) and "\n" not in str(err.value)
        if "csv" not in refused:  # refused before anything is built or rewritten
            assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.name != ".rlfw.lock"} == {
                k: v for k, v in before.items() if k != ".rlfw.lock"
            }
        return
    caplog.set_level(logging.WARNING, logger="rlfw")
    resume(str(run_dir), ["train.epochs=3", *extra])
    assert json.loads((run_dir / "status.json").read_text())["status"] == "finished"
    with (run_dir / "metrics.csv").open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == metric_columns(("actor_loss", "critic_loss", "q_mean"))
    assert [int(r[0]) for r in rows[1:]] == [1, 2, 3]
    with (run_dir / "episodes.csv").open(newline="") as f:
        episodes = list(csv.reader(f))
    assert episodes[0] == EPISODE_COLUMNS and all(len(r) == len(EPISODE_COLUMNS) for r in episodes[1:])
    assert {int(r[1]) for r in episodes[1:]} == {1, 2, 3}
    if case == "corrupt buffer file":
        assert "starting with an empty buffer" in caplog.text


# ------------------------------------------------------------------ the loader's fuzz (issue 33, 16)

def _saved(obj) -> bytes:
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


# a fixed corpus of damaged checkpoints: empty, text, cut, and readable files of the wrong shape
CORPUS = [b"", b"hello\n", b"PK\x03\x04", b"\x80\x02}q\x00.", b"\x00" * 64, _saved([1, 2, 3])[:40],
          _saved({"agent": 1}), _saved([1, 2, 3]), _saved("text"), _saved({101: 1})]  # fmt: skip


@pytest.mark.parametrize("data", CORPUS, ids=range(len(CORPUS)))
def test_a_damaged_checkpoint_is_one_config_error_line(tmp_path, data):
    """Every damaged file reaches the tools as one ConfigError line (never EOFError, IndexError
    or KeyError), and the error handler itself never raises on an empty message."""
    from rlfw.training.checkpoint import check_policy_state, load_latest

    (tmp_path / "last.pt").write_bytes(data)
    with pytest.raises(ConfigError) as err:
        state, read = load_latest(tmp_path, "last.pt")
        check_policy_state(state, read)
    assert "\n" not in str(err.value) and "last.pt" in str(err.value)


def test_a_fuzz_of_byte_strings_never_escapes_the_loader(tmp_path):
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from rlfw.training.checkpoint import check_policy_state, load_latest

    valid = _saved({"agent": {}, "config": {}, "counters": {"epoch": 1}})

    @settings(max_examples=150, deadline=None, database=None)
    @given(st.one_of(st.binary(max_size=300), st.tuples(st.integers(0, len(valid) - 1), st.binary(max_size=8))))
    def check(case):
        data = case if isinstance(case, bytes) else valid[: case[0]] + case[1] + valid[case[0] + len(case[1]):]
        (tmp_path / "last.pt").write_bytes(data)
        try:
            state, read = load_latest(tmp_path, "last.pt")
            check_policy_state(state, read)
        except ConfigError as err:
            assert "\n" not in str(err)

    check()


# ------------------------------------------------- a run directory from elsewhere is data (issue 33)

def _link(name: str, target: str):
    def damage(d: Path) -> None:
        p = d / name
        if p.exists():
            p.unlink()
        p.symlink_to(target)

    return damage


LINKS = [
    ("metrics.csv", "outside.csv"),
    ("rlfw.log", "outside.log"),
    ("episodes.csv", "outside.csv"),
    ("status.json", "outside.json"),
    ("checkpoints/last.pt", "outside.pt"),
    ("status.json.tmp", "outside.json"),  # a temp file rlfw would write through
    ("checkpoints/last.pt.tmp", "outside.pt"),
]


@pytest.mark.parametrize(("name", "target"), LINKS, ids=[n for n, _ in LINKS])
def test_resume_refuses_a_planted_link_and_leaves_its_target_alone(finished_run, tmp_path, name, target):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    outside = tmp_path / target
    outside.write_bytes(b"precious\n")
    _link(name, str(outside))(run_dir)
    with pytest.raises(ConfigError) as err:
        resume(str(run_dir), ["train.epochs=3"])
    assert "is a link" in str(err.value) and "\n" not in str(err.value)
    assert outside.read_bytes() == b"precious\n"


@pytest.mark.parametrize("name", ["metrics.csv", "rlfw.log", "status.json"])
def test_resume_refuses_a_planted_hard_link_and_leaves_the_other_file_alone(finished_run, tmp_path, name):
    """A hard link is the same file under two names: appending to rlfw.log or metrics.csv (or
    rewriting status.json in place on a full disk) would change the other one."""
    import os

    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    outside = tmp_path / "outside"
    outside.write_bytes(b"precious\n")
    (run_dir / name).unlink(missing_ok=True)
    os.link(outside, run_dir / name)
    with pytest.raises(ConfigError) as err:
        resume(str(run_dir), ["train.epochs=3"])
    assert "hard link" in str(err.value) and "\n" not in str(err.value)
    assert outside.read_bytes() == b"precious\n"


def test_tools_read_only_bounded_regular_files_of_a_run(finished_run, tmp_path):
    """report on metrics.csv linked to /dev/zero, a YAML bomb in .hydra/config.yaml, and a
    checkpoint linked to a file outside: one ConfigError line each, at once."""
    import time

    from rlfw.report import summarize, task_of
    from rlfw.training.checkpoint import load_latest

    zero = tmp_path / "zero"
    shutil.copytree(finished_run, zero)
    _link("metrics.csv", "/dev/zero")(zero)
    with pytest.raises(ConfigError, match="a link"):
        summarize([zero], out=tmp_path / "out")

    bomb = tmp_path / "bomb"
    shutil.copytree(finished_run, bomb)
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    (bomb / ".hydra" / "config.yaml").write_text("\n".join(lines) + "\nenv: {id: FetchReach-v4}\n")
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="aliases"):
        task_of(bomb)
    assert time.perf_counter() - t0 < 5.0

    linked = tmp_path / "linked"
    shutil.copytree(finished_run, linked)
    outside = tmp_path / "outside.pt"
    shutil.copy(linked / "checkpoints" / "last.pt", outside)
    _link("checkpoints/last.pt", str(outside))(linked)
    with pytest.raises(ConfigError, match="a link"):
        load_latest(linked / "checkpoints", "last.pt")
