"""Components load through the ``rlfw.components`` entry points, rlfw's own and other packages'.

tests/plugin_pkg/ is a separate package (``acme_rl``) whose pyproject declares an algorithm and
a noise under ``rlfw.components``. It is installed into a temporary directory as a
``*.dist-info`` built from that pyproject (what ``pip install --target`` leaves; no build
backend and no network needed), and only a subprocess's PYTHONPATH points there.
"""

from __future__ import annotations

import csv
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rlfw import components
from rlfw.components import GROUP, declared_entries, load_components
from rlfw.registry import _GROUPS, registry

from .conftest import TINY

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
PLUGIN = TESTS / "plugin_pkg"
_spec = importlib.util.spec_from_file_location("import_cycles", REPO / "tools" / "import_cycles.py")
assert _spec is not None and _spec.loader is not None
import_cycles = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(import_cycles)


def write_dist_info(site: Path, name: str, entries: dict[str, str] | None, version: str = "0.1.0") -> Path:
    """A hand-made ``<name>-<version>.dist-info`` in ``site`` (METADATA, and entry_points.txt
    with ``entries`` under :data:`GROUP` unless None)."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    if entries is not None:
        lines = [f"[{GROUP}]", *(f"{k} = {v}" for k, v in entries.items())]
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return info


def install_plugin(site: Path) -> dict[str, str]:
    """Install tests/plugin_pkg into ``site`` (its package and a dist-info made from its
    pyproject); returns its declared entries."""
    project = tomllib.loads((PLUGIN / "pyproject.toml").read_text())["project"]
    entries = dict(project["entry-points"][GROUP])
    shutil.copytree(PLUGIN / "src" / "acme_rl", site / "acme_rl")
    write_dist_info(site, project["name"], entries, project["version"])
    return entries


def run_rlfw(args: list[str], cwd: Path, site: Path | None, module: str = "rlfw") -> subprocess.CompletedProcess[str]:
    """``python -m <module> <args>`` (``rlfw``, ``rlfw.export``, ...) with ``site`` first on the
    PYTHONPATH the tests run with."""
    parts = [str(site)] if site is not None else []
    path = os.pathsep.join([*parts, *filter(None, [os.environ.get("PYTHONPATH", "")])])
    env = dict(os.environ, PYTHONPATH=path, PYTHONWARNINGS="ignore", HYDRA_FULL_ERROR="0", WANDB_MODE="disabled")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=env)  # fmt: skip


PENDULUM = ["env=gym", "env.id=Pendulum-v1", "buffer=uniform", *TINY, "train.epochs=1", "eval.episodes=1"]


def test_an_installed_package_adds_an_algorithm_and_a_noise(tmp_path):
    """python -m rlfw algo=acme_sac noise=acme_uniform trains with the plugin's classes and
    schemas; without the plugin on the path the same command is refused."""
    site = tmp_path / "site"
    assert {"algo.acme_sac", "noise.acme_uniform"} <= set(install_plugin(site))
    run = tmp_path / "run"
    args = ["algo=acme_sac", "noise=acme_uniform", "noise.width=0.37", *PENDULUM, f"hydra.run.dir={run}"]
    proc = run_rlfw(args, tmp_path, site)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "training acme_sac on Pendulum-v1" in proc.stdout + proc.stderr
    saved = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    assert saved["algo"]["name"] == "acme_sac" and saved["algo"]["acme_marker"] == 7  # the plugin's schema
    assert saved["noise"] == {"name": "acme_uniform", "random_eps": 0.0, "width": 0.37}
    with (run / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1]
    assert float(rows[0]["noise_sigma"]) == pytest.approx(0.37)  # AcmeUniformNoise.metrics
    assert float(rows[0]["noise_width"]) == pytest.approx(0.74)  # a metric only the plugin declares
    assert float(rows[0]["alpha"]) > 0  # SAC's update ran

    bad = run_rlfw(["noise=acme_uniform", "noise.width=-1", *PENDULUM], tmp_path, site)
    assert bad.returncode == 2 and "noise.width" in bad.stderr, bad.stderr[-2000:]  # its validate()

    without = run_rlfw(["algo=acme_sac", *PENDULUM, f"hydra.run.dir={tmp_path / 'no'}"], tmp_path, None)
    assert without.returncode == 2, without.stderr[-2000:]
    assert "acme_sac" in without.stderr


def test_a_package_adds_every_kind_of_component_and_its_run_trains_exports_and_evaluates(tmp_path):
    """The plugin's algorithm, noise, replay sampler, logger and env family, on the default env
    (FetchReach-v4, no preset of the plugin's own): the run trains with all five, ends with its
    final evaluation, and its policy exports and evaluates from the command line."""
    site = tmp_path / "site"
    assert set(install_plugin(site)) == {"algo.acme_sac", "noise.acme_uniform", "buffer.sampler.acme_recent",
                                         "logger.acme_jsonl", "env.family.acme_fetch"}  # fmt: skip
    run = tmp_path / "run"
    args = ["algo=acme_sac", "noise=acme_uniform", "buffer.sampler=acme_recent", "buffer.acme_window=300",
            "logger=acme_jsonl", "logger.acme_every=1", "env.family=acme_fetch", *TINY, "eval.episodes=2",
            "eval.stop_at=null", "eval.confirm_episodes=0", "eval.final_episodes=4", f"hydra.run.dir={run}"]  # fmt: skip
    proc = run_rlfw(args, tmp_path, site)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "training acme_sac on FetchReach-v4" in proc.stdout + proc.stderr
    saved = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    assert (saved["env"]["family"], saved["buffer"]["sampler"], saved["buffer"]["acme_window"]) == ("acme_fetch", "acme_recent", 300)
    assert saved["algo"]["clip_return"] is None  # no preset needed: SAC's family resolves it to no clip
    with (run / "episodes.csv").open() as f:
        lengths = {int(r["length"]) for r in csv.DictReader(f)}
    assert lengths == {25}  # the family's 25-step episodes (Fetch's own are 50)
    lines = [json.loads(line) for line in (run / "acme.jsonl").read_text().splitlines()]
    assert [line.get("epoch") for line in lines] == [1, 2, 2] and lines[-1]["end"] == "finished"  # the logger
    assert json.loads((run / "evaluation.json").read_text())["episodes"] == 4  # the run's final evaluation

    exported = run_rlfw([f"run_dir={run}", "format=torchscript"], tmp_path, site, module="rlfw.export")
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert (run / "export" / "policy_last.ts").stat().st_size > 0  # TorchScript (torch.jit.load)
    evaluated = run_rlfw([f"run_dir={run}", "episodes=3"], tmp_path, site, module="rlfw.evaluate")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert json.loads((run / "evaluation.json").read_text())["episodes"] == 3

    bad = run_rlfw(["buffer.sampler=acme_recent", "buffer.acme_window=0", *TINY], tmp_path, site)
    assert bad.returncode == 2 and "buffer.acme_window" in bad.stderr, bad.stderr[-2000:]  # the sampler's validate()
    bad = run_rlfw(["logger=acme_jsonl", "logger.acme_every=0", *TINY], tmp_path, site)
    assert bad.returncode == 2 and "logger.acme_every" in bad.stderr, bad.stderr[-2000:]  # the logger's validate()


def test_rlfw_source_never_names_the_plugin():
    for path in (REPO / "src" / "rlfw").rglob("*.py"):
        assert "acme" not in path.read_text(encoding="utf-8").lower(), path


def test_every_registered_option_is_declared_and_every_declared_one_registers():
    """pyproject's ``"<key>.<option>" = "<module>"`` table and the registries agree: a module
    that registers an option nobody declared would only load by accident."""
    load_components()
    table = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"][GROUP]
    declared = set(table)
    registered = {f"{key}.{name}" for key, reg in _GROUPS.items() for name in reg._entries}
    assert declared == registered
    assert set(declared_entries()) >= declared  # what this environment loads (metadata or the table)
    for entry in table:
        key, name = entry.rsplit(".", 1)
        assert name in registry(key)


def test_own_entries_come_from_metadata_when_the_distribution_declares_them(tmp_path, monkeypatch):
    """The installed path (a wheel): rlfw's entries are read from its dist-info, not from a
    pyproject.toml; another package's entries are added."""
    site = tmp_path / "site"
    write_dist_info(site, "rlfw", {"algo.td3": "rlfw.algos.td3", "noise.ou": "rlfw.noise.action_noise"})
    write_dist_info(site, "other-pkg", {"noise.other": "other_pkg.noise"})
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    missing = tmp_path / "no" / "pyproject.toml"  # never read on this path
    assert declared_entries(missing) == {
        "algo.td3": "rlfw.algos.td3",
        "noise.ou": "rlfw.noise.action_noise",
        "noise.other": "other_pkg.noise",
    }


def test_own_entries_fall_back_to_the_checkouts_pyproject(tmp_path, monkeypatch):
    """A source tree (or an install older than the declaration): distribution rlfw has no
    entry in the group, so the pyproject table is read; other packages still come from
    metadata. Without either, one error says so."""
    site = tmp_path / "site"
    write_dist_info(site, "rlfw", None)  # an rlfw install without the group
    write_dist_info(site, "other-pkg", {"noise.other": "other_pkg.noise"})
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\nname = "rlfw"\n[project.entry-points."rlfw.components"]\n'
                         '"algo.sac" = "rlfw.algos.sac"\n')  # fmt: skip
    assert declared_entries(pyproject) == {"algo.sac": "rlfw.algos.sac", "noise.other": "other_pkg.noise"}
    pyproject.write_text('[project]\nname = "rlfw"\n')
    with pytest.raises(RuntimeError, match="declares none"):
        declared_entries(pyproject)


def test_a_broken_entry_names_itself_and_is_retried(monkeypatch):
    monkeypatch.setattr(components, "_LOADED", None)
    monkeypatch.setattr(components, "declared_entries", lambda: {"algo.gone": "no_such_module_xyz"})
    with pytest.raises(ImportError, match=r"algo\.gone = no_such_module_xyz"):
        load_components()
    assert components._LOADED is None


def test_import_cycles_counts_by_name_imports_and_finds_none_in_the_checkout():
    """The old hidden cycle (registry -> by name -> components -> callbacks -> registry) is
    found once the by-name import counts; the checkout has no cycle."""
    old_registry = 'import importlib\ndef load():\n    importlib.import_module("rlfw.components")\n'
    assert import_cycles.by_name_imports(old_registry) == {"rlfw.components"}
    assert import_cycles.by_name_imports('__import__("rlfw.x"); import_module(name)') == {"rlfw.x"}
    imports = {"rlfw.registry": {"rlfw.components"}, "rlfw.components": {"rlfw.callbacks"},
               "rlfw.callbacks": {"rlfw.registry"}}  # fmt: skip
    assert import_cycles.find_cycle(imports) is not None
    imports["rlfw.registry"] = set()
    assert import_cycles.find_cycle(imports) is None
    out = subprocess.run([sys.executable, str(REPO / "tools" / "import_cycles.py")], capture_output=True, text=True,
                         timeout=120, cwd=REPO)  # fmt: skip
    assert out.returncode == 0 and "no import cycle" in out.stdout, out.stdout + out.stderr
