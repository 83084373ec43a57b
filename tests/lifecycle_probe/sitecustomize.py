"""Loaded by every Python process started with this directory on PYTHONPATH and
``RLFW_LIFECYCLE_PROBE=1`` (tests/test_lifecycle.py): adds a probe callback to the built-in
callbacks (:func:`rlfw.callbacks.make_callbacks`) that records, in ``<run_dir>/probe.jsonl``,
each start and end of the run with whether the run directory's lock was held at that moment
(a second open file description cannot take ``.rlfw.lock``), from this process or another."""

import os

if os.environ.get("RLFW_LIFECYCLE_PROBE") == "1":
    import errno
    import fcntl
    import json
    from pathlib import Path

    import rlfw.callbacks as _callbacks
    from rlfw.core import Callback

    def _lock_held(run_dir: Path) -> bool:
        path = run_dir / ".rlfw.lock"
        if not path.exists():
            return False
        fd = os.open(path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            return err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK)
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        finally:
            os.close(fd)

    class _Probe(Callback):
        def __init__(self, run_dir: Path) -> None:
            self.run_dir = Path(run_dir)

        def _write(self, event: str, loop: object) -> None:
            row = {"event": event, "pid": os.getpid(), "lock_held": _lock_held(self.run_dir),
                   "status": getattr(loop, "status", None), "epoch": getattr(loop, "epoch", None)}
            with (self.run_dir / "probe.jsonl").open("a") as f:
                f.write(json.dumps(row) + "\n")

        def on_start(self, loop: object) -> None:
            self._write("start", loop)

        def on_end(self, loop: object) -> None:
            self._write("end", loop)

    _real = _callbacks.make_callbacks

    def _make_callbacks(cfg, run_dir, total_steps, multirun=False):  # type: ignore[no-untyped-def]
        return [*_real(cfg, run_dir, total_steps, multirun), _Probe(run_dir)]

    _callbacks.make_callbacks = _make_callbacks
