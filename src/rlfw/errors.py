"""The one error type users see for bad configuration."""


class ConfigError(ValueError):
    """A bad key, value or combination, reported as one line that names the key.

    Raised before any simulator starts (except for checks that need the built env, such as a
    HER buffer on an env whose observations carry no goal). The CLI prints ``str(err)`` and
    exits with status 2.
    """
