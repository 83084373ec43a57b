"""The friction items of issue 20: each command gives one line and the right exit status, or works.

The Hydra app never starts in these tests: ``rlfw.__main__.train`` and
``rlfw.federated.__main__.federate`` are replaced by a function that fails the test, so a check
that lets a command through is seen at once (and no simulator runs).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from .conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]


def _hydra_started(*args, **kwargs):
    raise AssertionError("the command got past rlfw's own handling: Hydra started")


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    return lines[0]


# --- --help of the side tools -------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_evaluate_help_prints_usage_and_exits_0(monkeypatch, capsys, flag):
    import rlfw.evaluate as evaluate

    monkeypatch.setattr(evaluate, "evaluate", _hydra_started)
    evaluate.main([flag])  # returns: exit status 0
    out = capsys.readouterr()
    assert out.out.startswith("usage: python -m rlfw.evaluate run_dir=<run>")
    for key in ("episodes=10", "video=false", "video_episodes=1", "seed=10000", "checkpoint="):
        assert key in out.out, key
    assert out.err == ""


def test_federated_help_lists_options_without_internal_schemas(monkeypatch, capsys):
    import rlfw.federated.__main__ as fed

    monkeypatch.setattr(fed, "federate", _hydra_started)
    fed.main(["--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m rlfw.federated")
    assert "_schema" not in out
    assert re.search(r"algo: crossq, ddpg, sac, td3, tqc\n", out)
    assert "federated.rounds" in out and "federated.tls.root_cert" in out


# --- an env id of another family ----------------------------------------------------------

# Each case: the command line, fragments of the one error line (the fix it names).
OTHER_FAMILY = [
    (["env.id=Pendulum-v1"], ["env.id 'Pendulum-v1' is not a Gymnasium-Robotics Fetch task", "env=gym env.id=Pendulum-v1"]),
    (["env=fetch", "env.id=Hopper-v4"], ["env.family 'fetch'", "env=hopper env.id=Hopper-v4"]),
    (["env=panda", "env.id=FetchReach-v4"], ["not a panda-gym task", "env=fetch env.id=FetchReach-v4"]),
    (["env=FetchPush-v4", "env.id=PandaPush-v3"], ["not a Gymnasium-Robotics Fetch task", "env=panda env.id=PandaPush-v3"]),
]


@pytest.mark.parametrize(("args", "expected"), OTHER_FAMILY, ids=[" ".join(a) for a, _ in OTHER_FAMILY])
def test_an_id_of_another_family_stops_at_preflight(tmp_path, monkeypatch, capsys, args, expected):
    import rlfw.__main__ as cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "train", _hydra_started)
    with pytest.raises(SystemExit) as exit_:
        cli.main(args)
    assert exit_.value.code == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith("rlfw: error: ")
    for fragment in expected:
        assert fragment in line, (fragment, line)
    assert not (tmp_path / "outputs").exists()


def test_forgetting_env_gym_from_the_cli_leaves_no_run_dir(tmp_path):
    """The command of the report, as a user types it: one line, exit 2, no run directory."""
    proc = run_cli(["env.id=Pendulum-v1"], cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = _one_error_line(proc.stderr)
    assert line.startswith("rlfw: error: env.id 'Pendulum-v1'") and "env=gym env.id=Pendulum-v1" in line
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (tmp_path / "outputs").exists()


def test_the_family_ids_still_pass():
    from rlfw.config.preflight import preflight

    for args in (["env=PandaReach-v3"], ["env=FetchSlide-v2"], ["env=hopper", "env.id=Pendulum-v1"],
                 ["env=gym", "env.id=FetchReach-v4"]):  # fmt: skip
        assert preflight(args).jobs == 1, args


# --- Hydra plugins that are not installed -------------------------------------------------

# Each case: the override, the module made missing (sys.modules[name] = None: not importable,
# as when the package is not installed), the install command the line must name.
SWEEPS = "python -m pip install -c constraints.txt -e '.[sweeps]'"
MISSING_PLUGINS = [
    ("hydra/launcher=slurm", "hydra_plugins.hydra_submitit_launcher", SWEEPS),
    ("hydra/launcher=submitit_local", "submitit", SWEEPS),
    ("hydra/launcher=ray_cluster", "hydra_plugins.hydra_ray_launcher", "hydra-ray-launcher"),
]


@pytest.mark.parametrize(("override", "module", "install"), MISSING_PLUGINS,
                         ids=[f"{o} without {m}" for o, m, _ in MISSING_PLUGINS])  # fmt: skip
def test_a_missing_hydra_plugin_is_one_line_with_the_install_command(
    tmp_path, monkeypatch, capsys, override, module, install
):
    import rlfw.__main__ as cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "train", _hydra_started)
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["-m", override, "seed=0,1"])
    assert exit_.value.code == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(f"rlfw: error: {override} needs ") and module in line and install in line
    assert not (tmp_path / "multirun").exists()


def test_installed_plugins_pass_the_check():
    from rlfw.config.preflight import preflight

    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    assert preflight(["-m", "hydra/launcher=slurm", "seed=0,1"]).jobs == 2
    assert preflight(["-m", "hydra/launcher=joblib", "seed=0,1"]).jobs == 2


@pytest.mark.parametrize("sweeper", ["optuna", "rlfw_optuna"])
def test_hydra_s_optuna_sweeper_is_refused_in_one_line_naming_rlfw_tune(tmp_path, monkeypatch, capsys, sweeper):
    import rlfw.__main__ as cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "train", _hydra_started)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["-m", f"hydra/sweeper={sweeper}", "seed=0,1"])
    assert exit_.value.code == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(f"rlfw: error: hydra/sweeper={sweeper}: ") and "python -m rlfw.tune" in line
    assert not (tmp_path / "multirun").exists()


# --- install hints ------------------------------------------------------------------------


def test_a_missing_wandb_names_the_readme_install_form(monkeypatch):
    from rlfw.config.preflight import preflight
    from rlfw.errors import ConfigError

    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ConfigError) as err:
        preflight(["logger=wandb"])
    assert "python -m pip install -c constraints.txt -e '.[wandb]'" in str(err.value)


def test_no_install_hint_names_rlfw_on_the_package_index():
    """rlfw is not on the package index: ``pip install 'rlfw[x]'`` cannot work anywhere a user
    reads it (messages, docstrings, config comments)."""
    pattern = re.compile(r"pip install[^\n]*rlfw\[")
    hits = [
        f"{path.relative_to(ROOT)}:{n}"
        for folder in ("src", "conf")
        for path in sorted((ROOT / folder).rglob("*"))
        if path.suffix in (".py", ".yaml")
        for n, text in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(text)
    ]
    assert hits == []
