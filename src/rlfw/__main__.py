"""``python -m rlfw [overrides]``: train. Hydra main with config groups algo, buffer, noise, env.

Before Hydra runs any job, :func:`rlfw.config.preflight.preflight` composes and validates every
job of the command line (every job of a ``-m`` sweep), so a bad key or value stops with one
line and exit status 2 before any simulator starts.
"""

from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from rlfw.config.paths import config_dir
from rlfw.config.preflight import preflight
from rlfw.config.schema import register_schemas
from rlfw.errors import ConfigError

log = logging.getLogger("rlfw")

register_schemas()


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def train(cfg: DictConfig) -> float:
    """Train one job into Hydra's output dir; returns the final eval success rate (or return)."""
    from rlfw.runner import Runner

    run_dir = HydraConfig.get().runtime.output_dir
    try:
        row = Runner(cfg, run_dir).run()
    except ConfigError as err:
        log.error("error: %s", err)
        raise SystemExit(2) from None
    value = row.get("eval_success_rate")
    if value is None or value != value:
        value = row.get("eval_return", float("nan"))
    return float(value)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: preflight, then Hydra."""
    args = sys.argv[1:] if argv is None else argv
    try:
        preflight(args)
    except ConfigError as err:
        print(f"rlfw: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    sys.argv = [sys.argv[0], *args]
    train()


if __name__ == "__main__":
    main()
