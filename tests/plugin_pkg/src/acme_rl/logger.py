"""``logger=acme_jsonl``: the csv logger plus ``<run_dir>/acme.jsonl``, one JSON line per epoch
(``acme.every`` epochs apart), as another package adds a logger to rlfw: a schema extending
``LoggerConfig``, a function returning its callbacks, one ``register`` call and the option node."""

# No ``from __future__ import annotations``: OmegaConf reads the annotations at run time.
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore

from rlfw.core import Callback, in_range
from rlfw.loggers.schema import LoggerConfig
from rlfw.registry import register


@dataclass
class AcmeJsonlConfig(LoggerConfig):
    name: str = "acme_jsonl"
    acme_every: int = 1  # logger.acme_every: write every N epochs

    @staticmethod
    def validate(node: Any) -> None:
        LoggerConfig.validate(node)
        in_range(node, "acme_every", 1, prefix="logger.")


class AcmeJsonl(Callback):
    """Appends each epoch's row (NaN as null) to ``acme.jsonl``; a final line at the end."""

    def __init__(self, path: Path, every: int) -> None:
        self.path, self.every = path, every

    def _write(self, record: dict[str, Any]) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with self.path.open("a") as f:
            f.write(json.dumps(clean, default=str) + "\n")

    def on_epoch(self, loop: Any, row: dict[str, Any]) -> None:
        if int(row["epoch"]) % self.every == 0:
            self._write(dict(row))

    def on_end(self, loop: Any) -> None:
        self._write({"end": loop.status, "epoch": loop.epoch})


def acme_jsonl_logger(cfg: Any, run_dir: Path) -> list[Callback]:
    """The logger's own callbacks (rlfw adds the console, CSV files and the rest)."""
    return [AcmeJsonl(Path(run_dir) / "acme.jsonl", int(cfg.logger.acme_every))]


register("logger", "acme_jsonl", AcmeJsonlConfig, acme_jsonl_logger)
ConfigStore.instance().store(group="logger", name="acme_jsonl", node=AcmeJsonlConfig)
