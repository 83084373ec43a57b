"""``python -m rlfw.federated [overrides]``: a federation (Hydra app on conf/federated.yaml).

Simulation (default; server and clients in this process and one Ray actor)::

    python -m rlfw.federated federated.clients=[FetchPush-v4,FetchSlide-v4] federated.rounds=10

Real processes (one server, one process per client; ``hydra.run.dir`` picks each one's dir)::

    python -m rlfw.federated federated.mode=server federated.server_address=0.0.0.0:8080 ...
    python -m rlfw.federated federated.mode=client federated.client_index=0 \\
        federated.server_address=SERVER_HOST:8080 ...

Server and clients take the same ``federated.clients`` and training overrides. TLS: give the
server ``federated.tls.root_cert=ca.pem federated.tls.server_cert=server.pem
federated.tls.server_key=server.key`` and each client ``federated.tls.root_cert=ca.pem``.

Before Hydra runs, :func:`preflight` composes and validates the federation (every client's
config too), so a bad key or value stops with one line and exit status 2; a client whose
observation/goal/action sizes differ from the global model's stops the same way before Flower
starts.
"""

from __future__ import annotations

import argparse
import logging
import sys

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from rlfw.config.paths import config_dir
from rlfw.errors import ConfigError, fail
from rlfw.federated.schema import register_federated_schemas

log = logging.getLogger("rlfw")

register_federated_schemas()


def _user_overrides(overrides: list[str]) -> list[str]:
    return [o for o in overrides if not o.lstrip("~+").startswith(("hydra.", "hydra/"))]


def preflight(argv: list[str] | argparse.Namespace) -> None:
    """Compose and validate the federation of a command line (no env is built).

    Raises:
        ConfigError: the first problem, as one line.
    """
    from rlfw.config.cli import informational, parse_command_line
    from rlfw.federated.setup import plan

    args = parse_command_line(argv)
    if informational(args):
        return
    if args.multirun:
        raise ConfigError(
            "python -m rlfw.federated runs one federation; -m/--multirun is not supported"
        )
    plan(_user_overrides(list(args.overrides)))


def quiet_flower() -> None:
    """Send Flower's log records (INFO and up) through Hydra's handlers only, not twice."""
    import flwr.common  # noqa: F401  (adds Flower's own console handler, removed below)

    flwr_log = logging.getLogger("flwr")
    flwr_log.setLevel(logging.INFO)
    for handler in list(flwr_log.handlers):
        flwr_log.removeHandler(handler)


def federate(cfg: DictConfig) -> None:
    """The Hydra task (``config_name="federated"``): run the federation into Hydra's output dir."""
    from rlfw.federated.app import run

    hc = HydraConfig.get()
    quiet_flower()
    try:
        run(_user_overrides(list(hc.overrides.task)), hc.runtime.output_dir)
    except (ConfigError, ConnectionError) as err:
        raise fail("rlfw.federated", err) from None


def help_text() -> str:
    """``python -m rlfw.federated --help``: usage, the module docstring, the config groups'
    options (the YAML files in ``conf/<group>/``, without the internal ``*_schema`` entries of
    Hydra's ConfigStore that Hydra's own help lists) and the ``federated.*`` keys."""
    import dataclasses
    import textwrap

    from rlfw.config.paths import group_options
    from rlfw.federated.schema import FederatedConfig, TLSConfig

    def wrap(text: str, indent: str = "  ") -> str:
        return textwrap.fill(text, width=100, initial_indent=indent, subsequent_indent=indent + "  ",
                             break_on_hyphens=False)  # fmt: skip

    groups = [wrap(f"{g}: {', '.join(o for o in group_options(g) if not o.endswith('_schema'))}")
              for g in ("algo", "buffer", "noise", "env", "logger", "experiment")]  # fmt: skip
    keys = [f"federated.{f.name}" for f in dataclasses.fields(FederatedConfig) if f.name != "tls"]
    keys += [f"federated.tls.{f.name}" for f in dataclasses.fields(TLSConfig)]
    body = (__doc__ or "").split("\n\n", 1)[-1].strip()
    return "\n".join([
        "usage: python -m rlfw.federated [group=option ...] [key=value ...]",
        "",
        body,
        "",
        "Config groups (group=option; each client composes env=<federated.clients[i]>):",
        *groups,
        "",
        "Federation keys:",
        wrap(", ".join(keys)),
        "",
        "Training keys as in python -m rlfw --help. The composed config: python -m rlfw.federated --cfg job;",
        "Hydra's own help: python -m rlfw.federated --hydra-help",
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """Console entry point: help, preflight, then Hydra."""
    args = sys.argv[1:] if argv is None else argv
    if "--help" in args or "-h" in args:
        print(help_text())
        return
    from rlfw.config.cli import parse_command_line, run_hydra_app
    from rlfw.config.preflight import free_form_overrides

    args = free_form_overrides(args)
    try:
        preflight(parse_command_line(args))
    except ConfigError as err:
        raise fail("rlfw.federated", err) from None
    run_hydra_app(federate, args, config_path=str(config_dir()), config_name="federated")


if __name__ == "__main__":
    main()
