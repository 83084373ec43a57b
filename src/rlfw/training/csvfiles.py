"""metrics.csv and episodes.csv: their columns (:func:`metric_columns`), the append-only writer
(:class:`CsvLog`) and the loop's callback (:class:`CsvFiles`, rank 0 only), and their repair on
resume (:func:`truncate_csv`, :func:`truncate_logs`: rows after the checkpoint's epoch, cut rows
and damaged headers).
"""

from __future__ import annotations

import csv
import errno
import io
import logging
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from rlfw.core import Callback
from rlfw.core.runfiles import write_all
from rlfw.errors import ConfigError

log = logging.getLogger("rlfw")

BASE_COLUMNS = [
    "epoch", "env_steps", "scripted_steps", "updates", "episodes", "wall_time_s", "steps_per_s",
    "train_return", "train_success_rate", "eval_return", "eval_return_std", "eval_success_rate",
    "confirm_return", "confirm_success_rate",
]  # fmt: skip
EXPLORATION_COLUMNS = ["noise_sigma"]  # always present (empty without noise), so runs compare
EPISODE_COLUMNS = ["episode", "epoch", "env_steps", "env_index", "return", "length", "success"]


def metric_columns(agent_metrics: Sequence[str], exploration_metrics: Sequence[str] = ()) -> list[str]:
    """metrics.csv's header: the loop's columns, the agent's ``metric_names``, ``noise_sigma``
    and every other name the exploration declares in its ``metric_names`` (each once)."""
    return list(dict.fromkeys([*BASE_COLUMNS, *agent_metrics, *EXPLORATION_COLUMNS, *exploration_metrics]))


def fmt(x: Any) -> str:
    """A CSV/console cell: empty for None and NaN, 6 significant digits for floats."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    if isinstance(x, float):
        return f"{x:.6g}"
    return str(x)


def _csv_bytes(rows: Iterable[Sequence[str]]) -> bytes:
    buf = io.StringIO(newline="")
    csv.writer(buf).writerows(rows)
    return buf.getvalue().encode()


class CsvLog:
    """Append-only CSV with a fixed header; each batch of rows is written with one binary
    ``os.write`` sequence and fsynced.

    The file descriptor is unbuffered (no text wrapper): a failed write (a full disk) is cut
    back with ``os.ftruncate`` to the size before the batch, so the file never ends in a
    partial row (a text wrapper's ``truncate`` flushes its buffer first and fails again).
    """

    def __init__(self, path: Path, columns: list[str]) -> None:
        self.path, self.columns = path, columns
        # never through a link planted in the run directory (ELOOP: the run fails with one line)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0), 0o644)
        if os.fstat(self._fd).st_nlink > 1:  # a hard link: appending would change the other name's file too
            os.close(self._fd)
            self._fd = -1
            raise OSError(errno.EPERM, f"{path} is a hard link shared with another file: rlfw appends only to its own files")
        if os.fstat(self._fd).st_size == 0:
            self._append([columns])

    def _append(self, rows: Iterable[Sequence[str]]) -> None:
        start = os.fstat(self._fd).st_size
        try:
            write_all(self._fd, _csv_bytes(rows))
            os.fsync(self._fd)
        except OSError:
            try:
                os.ftruncate(self._fd, start)
            finally:
                raise

    def write(self, rows: Iterable[dict[str, Any]]) -> None:
        """Append ``rows`` and fsync them. A failed write (a full disk) is cut back to the rows
        written before it, so the file never ends in a partial row; the error is re-raised.

        Raises:
            OSError: the write failed (``ENOSPC``, an I/O error).
        """
        self._append([[fmt(row.get(c)) for c in self.columns] for row in rows])

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class CsvFiles(Callback):
    """Appends the epoch's row to metrics.csv and its finished episodes to episodes.csv."""

    def __init__(self) -> None:
        self.metrics: CsvLog | None = None
        self.episodes: CsvLog | None = None

    def on_start(self, loop: Any) -> None:
        exploration = getattr(loop, "exploration", None)
        self.metrics = CsvLog(loop.run_dir / "metrics.csv",
                              metric_columns(loop.agent.metric_names, getattr(exploration, "metric_names", ())))  # fmt: skip
        self.episodes = CsvLog(loop.run_dir / "episodes.csv", EPISODE_COLUMNS)

    def on_epoch(self, loop: Any, row: dict[str, Any]) -> None:
        assert self.metrics is not None and self.episodes is not None
        self.episodes.write(loop.last_episodes)
        self.metrics.write([row])

    def on_end(self, loop: Any) -> None:
        for f in (self.metrics, self.episodes):
            if f is not None:
                f.close()
        self.metrics = self.episodes = None


def truncate_csv(path: Path, key: str, max_value: int, columns: list[str] | None = None) -> None:
    """Keep only the rows whose integer ``key`` is <= ``max_value`` (atomic rewrite), and repair
    what a crash or a full disk can leave: a last line without its newline (a cut row) and rows
    whose cells do not fit the header are dropped, each with a warning.

    Args:
        path: the CSV (nothing happens if it does not exist).
        key: the integer column to cut on (``epoch``).
        max_value: the last value of ``key`` to keep.
        columns: the header the file must have. A damaged header (not these columns) is
            rewritten when the rows have this many cells; else the file is refused.

    Raises:
        ConfigError: one line naming the file: its header is damaged and cannot be rebuilt, or
            it is not text.
    """
    if not path.exists():
        return
    try:
        raw = path.read_bytes().decode()
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a CSV text file (damaged); move it away to resume without it") from None
    text = raw
    notes: list[str] = []
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
        notes.append("a cut last row")
    rows = list(csv.reader(text.splitlines()))
    if not rows:
        if raw:
            path.write_text("")
        return
    header = rows[0]
    upgraded = False
    if columns is not None and header != list(columns) and set(header) < set(columns) and "epoch" in header:
        # a run written by an older rlfw (fewer columns): its rows, cell by cell, under today's header
        log.warning("%s: columns %s added to a run written without them", path,
                    ", ".join(c for c in columns if c not in header))  # fmt: skip
        rows = [list(columns), *[[dict(zip(header, r)).get(c, "") for c in columns] if len(r) == len(header) else r
                                 for r in rows[1:]]]  # fmt: skip
        header = rows[0]
        upgraded = True
    if columns is not None and header != list(columns):
        if all(len(r) == len(columns) for r in rows[1:] if r):
            log.warning("%s: damaged header %s: rewritten as the run's columns", path, header[:3])
            header = list(columns)
            notes.append("a damaged header")
        else:
            raise ConfigError(
                f"{path}: damaged header ({','.join(header[:4])}...) and rows that do not fit the run's "
                f"{len(columns)} columns; move it away to resume without it"
            )
    if key not in header:
        raise ConfigError(f"{path}: the header has no '{key}' column (damaged); move it away to resume without it")
    col = header.index(key)
    keep = [header]
    for r in rows[1:]:
        if not r:
            continue
        try:
            value = int(float(r[col]))
        except (ValueError, IndexError):
            value = None
        if value is None or len(r) != len(header):
            notes.append("a row that does not fit the header")
            continue
        if value <= max_value:
            keep.append(r)
    if keep == rows and not notes and not upgraded:
        return
    for note in dict.fromkeys(notes):
        log.warning("%s: dropped %s", path, note)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", newline="") as f:
        csv.writer(f).writerows(keep)
    os.replace(tmp, path)


def truncate_logs(run_dir: Path, epoch: int, metric_columns: list[str] | None = None) -> None:
    """Drop the metrics.csv and episodes.csv rows of epochs after ``epoch`` (resume), and
    repair cut rows and damaged headers (:func:`truncate_csv`; ``metric_columns`` is
    metrics.csv's header when known).

    Raises:
        ConfigError: a CSV that cannot be repaired (one line naming it).
    """
    truncate_csv(Path(run_dir) / "metrics.csv", "epoch", epoch, metric_columns)
    truncate_csv(Path(run_dir) / "episodes.csv", "epoch", epoch, EPISODE_COLUMNS)
