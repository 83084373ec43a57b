"""The errors users see as one line: bad configuration, and a training run that diverged."""


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
