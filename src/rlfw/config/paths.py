"""Where things live: conf/ (inside the installed package, or at the repository top in a
checkout), and the per-process part of the default run directories' names (``${rlfw_run_id:}``).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from omegaconf import OmegaConf

_RUN_ID: str | None = None

_PKG = Path(__file__).resolve().parent.parent


def config_dir() -> Path:
    """The absolute path of the directory holding ``config.yaml``.

    A wheel ships conf/ as ``rlfw/conf`` (pyproject's force-include); an editable install or a
    source checkout has it at ``<repo>/conf`` next to ``src/``.

    Raises:
        FileNotFoundError: if neither location holds ``config.yaml``.
    """
    for candidate in (_PKG / "conf", _PKG.parent.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError(
        f"rlfw's conf/ directory was not found in {_PKG / 'conf'} or {_PKG.parent.parent / 'conf'}"
    )


def group_options(group: str) -> list[str]:
    """The option names of a config group: the YAML files in ``conf/<group>/``."""
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


def run_id() -> str:
    """The per-process part of the default run directory's name (resolver ``${rlfw_run_id:}``
    in ``hydra.run.dir``): ``<pid>-<4 random hex digits>``, the same for every call in one
    process, so runs started in the same second (parallel launches, on one host or on several
    sharing a file system) get different directories."""
    global _RUN_ID
    if _RUN_ID is None:
        _RUN_ID = f"{os.getpid()}-{secrets.token_hex(2)}"
    return _RUN_ID


def register_resolvers() -> None:
    """Register ``${rlfw_run_id:}`` (:func:`run_id`), which conf/config.yaml's ``hydra.run.dir``
    and ``hydra.sweep.dir`` use: runs or sweeps started in the same second never share a
    directory. Cached like Hydra's ``${now:}``: a sweep's jobs (joblib workers, SLURM jobs) get
    the config with the launching process's resolved value (Hydra copies the resolver cache).
    Idempotent."""
    if not OmegaConf.has_resolver("rlfw_run_id"):
        OmegaConf.register_new_resolver("rlfw_run_id", run_id, use_cache=True)
