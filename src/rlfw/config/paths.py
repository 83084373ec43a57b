"""Where conf/ lives: inside the installed package (wheel) or at the repository top (checkout)."""

from __future__ import annotations

from pathlib import Path

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
