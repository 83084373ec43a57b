"""Reading a run directory as data only (issue 33): a run directory may come from someone else,
so every file rlfw reads from it is a regular file inside it (no link, no device, no FIFO),
read with a size bound, and YAML is read without alias expansion (a "billion laughs" file
would otherwise expand to gigabytes).
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from rlfw.errors import ConfigError

if TYPE_CHECKING:
    from omegaconf import DictConfig

# size bounds: text files of a run (YAML, CSV, JSON) and checkpoint files (a saved replay buffer
# of 2M Fetch transitions is about 400 MB)
MAX_TEXT_BYTES = 256 * 2**20
MAX_CHECKPOINT_BYTES = 16 * 2**30
# a run's small metadata files (.hydra/*.yaml, status.json, evaluation.json, versions.json):
# rlfw writes them in kilobytes; a bigger one is not a run's and would only cost time to parse
MAX_META_BYTES = 2**20


def create_fresh(path: str | Path) -> int:
    """A write descriptor of a new file at ``path`` (a temp file before a rename): whatever
    stood there (a stale temp file, a link planted in its place) is removed first, and the file
    is created with ``O_EXCL | O_NOFOLLOW``, so nothing is ever written through a link.

    Raises:
        OSError: the file cannot be created.
    """
    p = Path(path)
    try:
        os.unlink(p)
    except FileNotFoundError:
        pass
    return os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)


def check_regular(path: str | Path, limit: int = MAX_TEXT_BYTES) -> Path:
    """``path`` if it is a regular file (not a link, a device, a FIFO or a directory) of at most
    ``limit`` bytes.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ConfigError: one line naming the file and what it is instead.
    """
    p = Path(path)
    st = os.lstat(p)  # FileNotFoundError when missing
    if stat.S_ISLNK(st.st_mode):
        raise ConfigError(f"{p}: a link (to {os.readlink(p)}): rlfw reads only regular files inside a run directory")
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise ConfigError(f"{p}: {kind}: rlfw reads only regular files inside a run directory")
    if st.st_size > limit:
        raise ConfigError(f"{p}: {st.st_size} bytes, more than the {limit} rlfw reads from a run directory")
    return p


def read_text(path: str | Path, limit: int = MAX_TEXT_BYTES) -> str:
    """The text of a run file, checked by :func:`check_regular` (read with ``O_NOFOLLOW`` and at
    most ``limit`` bytes, so a file swapped for a link after the check is not followed either).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ConfigError: a link, not a regular file, too large, or not UTF-8 text.
    """
    p = check_regular(path, limit)
    fd = os.open(p, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        data = os.read(fd, limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise ConfigError(f"{p}: more than the {limit} bytes rlfw reads from a run directory")
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not UTF-8 text (damaged)") from None


MAX_NESTING = 100  # brackets deep; a run's files nest 3-4 levels


def _flow_depth(text: str) -> int:
    """The deepest nesting of ``[``/``{`` brackets in ``text``, counted without parsing (a bracket
    inside a quoted string counts too, which only over-counts). O(len(text)): PyYAML takes minutes
    on 100,000 nested brackets before it fails, this takes milliseconds."""
    depth = deepest = 0
    for ch in re.findall(r"[\[\]{}]", text):
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth = max(depth - 1, 0)
    return deepest


def load_yaml(text: str, name: str | Path) -> object:
    """``yaml.safe_load(text)`` refusing aliases (``*anchor``): rlfw writes none, and expanding
    them is how a small file becomes gigabytes.

    Raises:
        ConfigError: one line naming ``name``: aliases, or not YAML.
    """
    import yaml

    if _flow_depth(text) > MAX_NESTING:  # PyYAML's scanner is quadratic in the flow depth
        raise ConfigError(f"{name}: nested too deeply to be a run's YAML (more than {MAX_NESTING} levels)")
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                raise ConfigError(f"{name}: YAML aliases (*{event.anchor}) are refused in a run directory")
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        lines = str(err).strip().splitlines()
        raise ConfigError(f"{name}: not valid YAML ({lines[0] if lines else type(err).__name__})") from None
    except RecursionError:
        raise ConfigError(f"{name}: nested too deeply to be a run's YAML") from None


def load_json(text: str, name: str | Path) -> object:
    """``json.loads(text)``, every failure (not JSON, nested too deeply) as one line.

    Raises:
        ConfigError: one line naming ``name``.
    """
    import json

    try:
        return json.loads(text)
    except RecursionError:
        raise ConfigError(f"{name}: nested too deeply to be a run's JSON") from None
    except ValueError as err:
        raise ConfigError(f"{name}: not valid JSON ({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None


def plain_config(data: object, name: str | Path) -> DictConfig:
    """A config read from a run (a checkpoint's ``config`` entry, ``.hydra/config.yaml``) as an
    OmegaConf ``DictConfig`` with every interpolation resolved, so that what the trust check
    (:func:`rlfw.envs.check_trusted`) reads is what the run is built from: an interpolation
    cannot hide a module name from it.

    Raises:
        ConfigError: one line naming ``name``: not a mapping, a value OmegaConf cannot hold
            (a date, a tensor), an interpolation that does not resolve, nested too deeply.
    """
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if not isinstance(data, dict):
        raise ConfigError(f"{name}: the run's config is a {type(data).__name__}, not a mapping")
    try:
        resolved = OmegaConf.to_container(OmegaConf.create(data), resolve=True)
        out = OmegaConf.create(resolved)
        assert isinstance(out, DictConfig)
        return out
    except RecursionError:
        raise ConfigError(f"{name}: the run's config is nested too deeply") from None
    except (OmegaConfBaseException, ValueError, TypeError, KeyError) as err:
        first = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), type(err).__name__)
        raise ConfigError(f"{name}: the run's config cannot be read ({first})") from None


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte of ``data`` is written to the file descriptor ``fd`` (a write
    may be partial).

    Raises:
        OSError: a write failed (``ENOSPC``, an I/O error); the bytes before it stay written.
    """
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
