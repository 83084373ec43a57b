"""nox sessions: tests (default, CI), unit, slow, cluster (a real single-node SLURM), lint (ruff, import layers, no cycles), typecheck, docs, bench.

Every install goes through constraints.txt: torch==2.13.0 is the local CPU wheel, and mujoco
stays below 3.12 (gymnasium-robotics 1.4.2's Fetch envs break on 3.12+).
"""

from __future__ import annotations

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = False

C = ("-c", "constraints.txt")
ENV = {"WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore::DeprecationWarning"}


@nox.session
def tests(session: nox.Session) -> None:
    """The default test run (what CI runs), against rlfw installed as a wheel (not editable).

    Installing the built wheel checks that conf/ ships inside it and is found from there.
    """
    session.install(*C, ".[test,federated]")
    session.run("pytest", "-m", "not slow and not cluster", "-p", "no:cacheprovider", *session.posargs, env=ENV)


@nox.session
def unit(session: nox.Session) -> None:
    """The unit tests alone (marked ``unit``: no simulator, no subprocess), in under 2 minutes."""
    session.install(*C, ".[test]")
    session.run("pytest", "-m", "unit", "-p", "no:cacheprovider", *session.posargs, env=ENV)


@nox.session
def cluster(session: nox.Session) -> None:
    """Cluster sweeps against a real single-node SLURM (tests/test_cluster.py): installs
    Debian's slurm-wlm and munge when missing (apt-get, as root) and rlfw[sweeps]; the tests
    start munged, slurmctld and slurmd in a temporary directory and stop them at the end."""
    session.install(*C, ".[test,sweeps]")
    session.run("python", "-c", "import sys; sys.path.insert(0, 'tools'); import slurm_local; slurm_local.ensure_installed()")
    session.run("pytest", "-m", "cluster", "-p", "no:cacheprovider", "tests/test_cluster.py", *session.posargs, env=ENV)


@nox.session
def slow(session: nox.Session) -> None:
    """Longer end-to-end runs marked ``slow``."""
    session.install(*C, ".[test,federated]")
    session.run("pytest", "-m", "slow", "-p", "no:cacheprovider", *session.posargs, env=ENV)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check; the import layers (import-linter, pyproject's [tool.importlinter]) and no
    import cycle between rlfw's modules (tools/import_cycles.py). Both read the source only."""
    session.install("ruff==0.17.5", "import-linter==2.16")
    session.run("ruff", "check", "src", "tests", "benchmarks", "tools", "noxfile.py")
    env = {"PYTHONPATH": "src"}
    session.run("lint-imports", env=env)
    session.run("python", "tools/import_cycles.py", env=env)


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy on src/."""
    session.install(*C, "-e", ".[federated]", "mypy==2.4.1")
    session.run("mypy", "src/rlfw")


@nox.session
def docs(session: nox.Session) -> None:
    """The documentation site (mkdocs.yml) built with warnings as errors (``mkdocs build
    --strict``) into site/; the API reference is read from src/ statically (rlfw is not
    installed). ``nox -s docs -- serve`` previews it instead."""
    session.install("mkdocs>=1.6", "mkdocs-material>=9.5", "mkdocstrings[python]>=0.26")
    env = {"NO_MKDOCS_2_WARNING": "1"}
    if session.posargs[:1] == ["serve"]:
        session.run("mkdocs", "serve", env=env)
    else:
        session.run("mkdocs", "build", "--strict", "--site-dir", "site", env=env)


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks against Stable-Baselines3 on this machine (not in CI); prints a table.

    ``nox -s bench -- --quick`` runs a shortened version.
    """
    session.install(*C, "-e", ".[bench]")
    session.run("python", "benchmarks/run.py", *session.posargs, env=ENV)
