"""The errors users see as one line: bad configuration, a training run that diverged, and a
run stopped by a signal."""


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
