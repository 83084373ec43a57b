"""The command line of rlfw's Hydra apps (``python -m rlfw``, ``python -m rlfw.federated``): parsed
once by :func:`parse_command_line`, and Hydra entered only through its public entry point,
``hydra.main`` (:func:`run_hydra_app`).

Hydra's command-line flags are part of its documented interface (``--help``, ``--hydra-help``,
``--cfg``, ``--resolve``, ``--package``, ``--run``, ``--multirun``, ``--shell-completion``,
``--config-path``, ``--config-name``, ``--config-dir``, ``--info``: Hydra 1.3, "Command line
flags"); :func:`args_parser` declares the same flags so that rlfw's checks read the command line
as Hydra will, without importing Hydra's private modules. ``--experimental-rerun`` is refused:
it unpickles a file, and nothing rlfw loads from disk may run code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from rlfw.errors import ConfigError

INFO_CHOICES = ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath")


def args_parser() -> argparse.ArgumentParser:
    """An ``argparse`` parser of Hydra's command-line flags (Hydra 1.3), with the same attribute
    names as Hydra's: ``overrides`` (list of ``key=value`` strings), ``help``, ``hydra_help``,
    ``cfg`` (``job``/``hydra``/``all`` or None), ``resolve``, ``package``, ``run``, ``multirun``,
    ``shell_completion``, ``config_path``, ``config_name``, ``config_dir``,
    ``experimental_rerun``, ``info`` (one of :data:`INFO_CHOICES` or None)."""
    from hydra import __version__

    p = argparse.ArgumentParser(add_help=False, description="Hydra")
    p.add_argument("--help", "-h", action="store_true", help="Application's help")
    p.add_argument("--hydra-help", action="store_true", help="Hydra's help")
    p.add_argument("--version", action="version", version=f"Hydra {__version__}", help="Show Hydra's version and exit")
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    p.add_argument("--cfg", "-c", choices=["job", "hydra", "all"], help="Show config instead of running")
    p.add_argument("--resolve", action="store_true", help="Resolve interpolations before printing (with --cfg)")
    p.add_argument("--package", "-p", help="Config package to show")
    p.add_argument("--run", "-r", action="store_true", help="Run a job")
    p.add_argument("--multirun", "-m", action="store_true", help="Run multiple jobs (launcher and sweeper)")
    p.add_argument("--shell-completion", "-sc", action="store_true", help="Install or uninstall shell completion")
    p.add_argument("--config-path", "-cp", help="Overrides the config_path")
    p.add_argument("--config-name", "-cn", help="Overrides the config_name")
    p.add_argument("--config-dir", "-cd", help="Adds a config dir to the config search path")
    p.add_argument("--experimental-rerun", help="(refused by rlfw: it unpickles a file)")
    p.add_argument("--info", "-i", const="all", nargs="?", choices=INFO_CHOICES, help="Print Hydra information")
    return p


def parse_command_line(argv: Sequence[str] | argparse.Namespace) -> argparse.Namespace:
    """``argv`` (``sys.argv[1:]``) parsed as Hydra parses it; an already parsed namespace is
    returned as it is, so each entry point parses its command line once.

    Raises:
        SystemExit: status 2 with argparse's usage line for an unknown flag (as Hydra does);
            status 0 after printing the version for ``--version``.
        ConfigError: ``--experimental-rerun`` (it loads a pickle, which can run code).
    """
    if isinstance(argv, argparse.Namespace):
        return argv
    args = args_parser().parse_args(list(argv))
    if args.experimental_rerun is not None:
        raise ConfigError(
            "--experimental-rerun is refused: it unpickles a file, which can run code; "
            "continue a run with resume=<run_dir> or repeat it with its .hydra/overrides.yaml"
        )
    return args


def informational(args: argparse.Namespace) -> bool:
    """Whether the command line only prints (help, config, info, shell completion): no job runs."""
    return bool(args.help or args.hydra_help or args.info or args.shell_completion or args.cfg)


def run_hydra_app(task_function: Callable[[Any], Any], argv: Sequence[str], config_path: str,
                  config_name: str = "config") -> None:  # fmt: skip
    """Run ``task_function`` as a Hydra app on the command line ``argv`` through Hydra's public
    entry point, ``hydra.main(version_base="1.3")``, exactly as ``python app.py <argv>`` would
    (single run, ``-m`` sweeps with launchers and sweepers, ``--cfg``, ``--info``).

    ``hydra.main`` reads ``sys.argv``; it is set to ``[sys.argv[0], *argv]`` for the call and
    restored afterwards.

    Args:
        task_function: called with each job's composed ``DictConfig``.
        argv: the command line after the program name.
        config_path: the absolute directory holding ``<config_name>.yaml``.
        config_name: the root config file's name without ``.yaml``.

    Raises:
        SystemExit: whatever Hydra exits with (status 1 after a Hydra error it prints).
    """
    import hydra

    app = hydra.main(version_base="1.3", config_path=config_path, config_name=config_name)(task_function)
    saved = sys.argv
    sys.argv = [saved[0] if saved else "rlfw", *argv]
    try:
        app()
    finally:
        sys.argv = saved
