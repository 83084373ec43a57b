"""The errors users see as one line: bad configuration, a training run that diverged, an env
that broke its contract, and a run stopped by a signal."""


class ConfigError(ValueError):
    """A bad key, value or combination, reported as one line that names the key.

    Raised before any simulator starts (except for checks that need the built env, such as a
    HER buffer on an env whose observations carry no goal). The CLI prints ``str(err)`` and
    exits with status 2.
    """


class TrainingDiverged(RuntimeError):
    """A loss, gradient or parameter became NaN or infinite (the divergence guard).

    The message is one line naming the epoch, the update and the value, and how to resume from
    the last good checkpoint. The run's ``status.json`` says ``failed``; no checkpoint with a
    non-finite tensor is written. The CLI prints it and exits with status 1.
    """


class EnvFault(TrainingDiverged):
    """The env broke its contract while training: it raised in ``reset`` or ``step``, or
    returned a non-finite observation, goal or reward, or one of the wrong shape.

    The message is one line naming the env, what it did, the field and the env step; the run's
    ``status.json`` says ``failed`` (a resume hint only where a checkpoint exists). It is a
    :class:`TrainingDiverged` for every handler (one line, exit status 1), but never blames
    learning.
    """


class TrainingInterrupted(Exception):
    """A stop signal (SIGTERM from ``timeout`` or a scheduler, SLURM's SIGUSR1 warning) ended
    the run after its current cycle.

    The message is one line naming the signal, where the run stopped, the last checkpoint's
    epoch and the resume command. The run's ``status.json`` says ``interrupted``. The CLI logs
    it and exits with status ``128 + signum`` (143 for SIGTERM), as a process killed by the
    signal would.

    Attributes:
        signum: the signal's number.
    """

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


def first_line(err: BaseException) -> str:
    """``<Type>: <the first line of its message>`` (cut at 200 characters), or the type's name
    alone when the message is empty (``EOFError()`` from an empty file): never raises."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:200]}" if lines else type(err).__name__


def exit_status(err: BaseException, bad_input: tuple[type[BaseException], ...] = ()) -> int | None:
    """The exit status a command ends with for ``err``: the one map of every entry point
    (``python -m rlfw``, ``rlfw.evaluate``, ``rlfw.export``, ``rlfw.report``, ``rlfw.tune``,
    ``rlfw.federated``).

    - 2: bad input: :class:`ConfigError`, or one of the entry point's own ``bad_input`` types
      (a missing optional package, a directory that does not exist);
    - 1: the run failed: :class:`TrainingDiverged`, an ``OSError`` (a full disk, a lost peer);
    - ``128 + signum``: :class:`TrainingInterrupted` (and a ``KeyboardInterrupt``, or anything
      with an int ``signum``: 130 for SIGINT), as a process killed by the signal;
    - None: anything else (a bug: its traceback is shown).
    """
    if isinstance(err, (ConfigError, *bad_input)):
        return 2
    signum = getattr(err, "signum", None)
    if isinstance(err, TrainingInterrupted | KeyboardInterrupt):
        return 128 + (signum if isinstance(signum, int) else 2)  # 2: SIGINT
    if isinstance(err, TrainingDiverged | OSError):
        return 1
    return None


def fail(prog: str, err: BaseException, bad_input: tuple[type[BaseException], ...] = (),
         message: str | None = None) -> SystemExit:  # fmt: skip
    """Print ``<prog>: error: <message or err>`` to stderr (one line) and return the
    ``SystemExit`` with :func:`exit_status` (1 for an error outside the map) for the caller to
    raise ``from None``."""
    import sys

    print(f"{prog}: error: {err if message is None else message}", file=sys.stderr)
    status = exit_status(err, bad_input)
    return SystemExit(1 if status is None else status)
