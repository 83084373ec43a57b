"""Check the command line before Hydra runs any job: every job of a sweep composes and validates.

Hydra's own composition errors are several lines long; :func:`preflight` composes each job with
the Compose API first and turns any failure into one :class:`ConfigError` line, e.g.::

    unknown buffer 'hr'; choose one of: her, nstep, per, uniform
    unknown key 'algo.tua'; the keys of algo are: action_l2, activation, ...
    invalid value for 'train.batch_size': Value 'big' of type 'str' could not be converted to Integer
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException, HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    OmegaConfBaseException,
    ValidationError,
)

from rlfw.config.cli import informational, parse_command_line
from rlfw.config.paths import config_dir
from rlfw.config.schema import register_schemas
from rlfw.config.validate import check_run_length, resolve_total_steps, validate
from rlfw.errors import ConfigError

# Overrides rlfw adds to the root config that are not in the schema (handled by the apps).
_APP_KEYS = ("resume",)

# hydra/<group>=<option> choices that need a Hydra plugin (rlfw's conf/hydra/ files and the
# plugins' own config names): (what it is, the modules it needs, how to install them).
_SWEEPS = "python -m pip install -c constraints.txt -e '.[sweeps]'"
_SUBMITIT = ("the submitit launcher plugin", ("hydra_plugins.hydra_submitit_launcher", "submitit"), _SWEEPS)
_RAY = ("the Ray launcher plugin", ("hydra_plugins.hydra_ray_launcher", "ray"),
        "python -m pip install -c constraints.txt hydra-ray-launcher")  # fmt: skip
_JOBLIB = ("the joblib launcher plugin", ("hydra_plugins.hydra_joblib_launcher", "joblib"),
           "python -m pip install -c constraints.txt -e .")  # fmt: skip
# Sweepers rlfw no longer supports, and what to use instead.
_NO_OPTUNA_SWEEPER = ("Hydra's Optuna sweeper is not supported (it pins optuna<3, whose database storage fails "
                      "with the SQLAlchemy 2 that Flower needs); tune with python -m rlfw.tune (Optuna 4, pruning, "
                      "seeds, a study database), e.g. python -m rlfw.tune algo.tau='interval(0.001,0.05)'")
REMOVED_SWEEPERS = {"optuna": _NO_OPTUNA_SWEEPER, "rlfw_optuna": _NO_OPTUNA_SWEEPER}
HYDRA_PLUGINS: dict[tuple[str, str], tuple[str, tuple[str, ...], str]] = {
    ("hydra/launcher", "slurm"): _SUBMITIT,
    ("hydra/launcher", "submitit_slurm"): _SUBMITIT,
    ("hydra/launcher", "submitit_local"): _SUBMITIT,
    ("hydra/launcher", "ray_cluster"): _RAY,
    ("hydra/launcher", "ray"): _RAY,
    ("hydra/launcher", "joblib"): _JOBLIB,
}


def _first_line(text: str) -> str:
    return next((ln.strip() for ln in str(text).splitlines() if ln.strip()), str(text))


def _keys_of(err: OmegaConfBaseException) -> str:
    obj = getattr(err, "object_type", None)
    if obj is not None and dataclasses.is_dataclass(obj):
        return ", ".join(sorted(f.name for f in dataclasses.fields(obj)))
    return ""


def _value_of(key: str, err: BaseException) -> str:
    """The value the user typed for ``key``, read from Hydra's message, or ''."""
    text = str(err)
    marker = f"'{key}="
    if marker in text:
        return text.split(marker, 1)[1].split("'", 1)[0]
    return ""


def parse_key_values(schema: type, args: list[str]) -> Any:
    """The ``key=value`` arguments of a side tool (``rlfw.evaluate``, ``rlfw.export``) typed by
    its dataclass ``schema``: an OmegaConf node with every key of ``schema``.

    Raises:
        ConfigError: one line for an unknown key, a wrongly typed value or a missing required
            key (``run_dir``, a ``MISSING`` field read here).
    """
    from omegaconf.errors import OmegaConfBaseException

    try:
        node = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.from_dotlist(args))
        for field in dataclasses.fields(schema):
            getattr(node, field.name)  # a MISSING required key raises here
    except OmegaConfBaseException as err:
        raise ConfigError(translate(err)) from None
    return node


# Free-form dicts whose keys a user adds without Hydra's + prefix.
FREE_FORM = ("env.kwargs.",)


def free_form_overrides(args: list[str]) -> list[str]:
    """The user's overrides as Hydra takes them, with two conventions users bring:

    - ``env.kwargs.<key>=<value>`` becomes Hydra's ``++env.kwargs.<key>=<value>`` (add or
      override), so a user types the key as for any other setting; the keys are then checked
      against the env's constructor (:meth:`rlfw.config.schema.EnvConfig.check_kwargs`);
    - ``train.total_steps=N`` trains N env steps, as Stable-Baselines3's ``total_timesteps``
      does: a preset's ``eval.stop_at`` is lifted (``eval.stop_at=null`` is added) unless
      ``eval.stop_at`` is given too; ``best.pt`` is still chosen by the confirmations.

    Every other override is kept as given."""
    out = [f"++{a}" if a.startswith(FREE_FORM) and "=" in a else a for a in args]
    keys = {a.split("=", 1)[0].lstrip("+~") for a in args}
    if "train.total_steps" in keys and "eval.stop_at" not in keys:
        out.append("eval.stop_at=null")
    return out


def _family_key_hint(key: str) -> str:
    """Where an ``env.<key>`` unknown to this env option lives: the env family whose schema
    has it (``env.grasped_start``: the fetch family's), or nothing."""
    if not key.startswith("env.") or key.count(".") != 1:
        return ""
    from rlfw.registry import registry

    leaf = key.split(".", 1)[1]
    families = registry("env.family")
    owners = [n for n in families.names()
              if families.get(n).schema is not None and leaf in getattr(families.get(n).schema, "__dataclass_fields__", {})]  # fmt: skip
    return f"; {key} belongs to the env options of family {', '.join(owners)} (env=<a {owners[0]} task>)" if owners else ""


def translate(err: BaseException) -> str:
    """One line for a Hydra/OmegaConf composition error."""
    if isinstance(err, MissingConfigException):
        missing = str(getattr(err, "missing_cfg_file", "") or "")
        options = getattr(err, "options", None)
        if "/" in missing and options:
            group, name = missing.rsplit("/", 1)
            options = [o for o in options if not str(o).endswith("_schema")]
            return f"unknown {group} '{name}'; choose one of: {', '.join(sorted(options))}"
        return _first_line(str(err))
    cause: BaseException | None = err
    while cause is not None and not isinstance(cause, OmegaConfBaseException):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, ValidationError):
        key = cause.full_key or "?"
        return f"invalid value for '{key}': {_first_line(str(cause.msg))}"
    if isinstance(cause, ConfigKeyError | ConfigAttributeError):
        key = getattr(cause, "full_key", None) or "?"
        parent = key.rsplit(".", 1)[0] if "." in key else "the root config"
        keys = _keys_of(cause)  # type: ignore[arg-type]
        if getattr(cause, "object_type", None) is dict:  # a free-form dict such as env.kwargs
            value = f"={_value_of(key, err)}" if _value_of(key, err) else "=..."
            return (f"unknown key '{key}': {parent} is a dict with no such key yet; add one with "
                    f"Hydra's + prefix: +{key}{value}")
        allowed = f"; the keys of {parent} are: {keys}" if keys else ""
        return f"unknown key '{key}'{allowed}{_family_key_hint(key)}"
    if cause is not None:
        return _first_line(getattr(cause, "msg", None) or str(cause))
    return _first_line(str(err))


def expand_jobs(overrides: list[str], multirun: bool) -> list[list[str]]:
    """The override lists of the jobs a command line makes (one unless ``-m`` sweeps).

    Sweeps of choices and ranges expand to their cartesian product; a sweep Hydra's basic
    sweeper cannot expand (an Optuna ``interval``) keeps its first value.

    Raises:
        ConfigError: if an override cannot be parsed.
    """
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as err:
        raise ConfigError(f"cannot parse the overrides: {_first_line(str(err))}") from None
    if not multirun:
        return [list(overrides)]
    axes: list[list[str]] = []
    for ov in parsed:
        if ov.is_sweep_override():
            try:
                values = list(ov.sweep_string_iterator())
            except Exception:  # interval() and other sweeper-specific sweeps
                values = []
            key = ov.get_key_element()
            axes.append([f"{key}={v}" for v in values] or [])
            if not values:
                axes.pop()
        else:
            axes.append([str(ov.input_line)])
    return [list(job) for job in itertools.product(*axes)]


@contextlib.contextmanager
def hydra_context() -> Iterator[None]:
    """A Hydra context for the Compose API: the running app's, or one on rlfw's conf/."""
    if GlobalHydra.instance().is_initialized():
        yield
        return
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        yield


def compose_config(overrides: list[str], config_name: str = "config") -> DictConfig:
    """Compose (no Hydra run) the config of one job (``config_name`` in conf/: ``config``, or
    ``federated`` for ``python -m rlfw.federated``).

    Raises:
        ConfigError: a composition failure, as one line.
    """
    register_schemas()
    with hydra_context():
        try:
            return compose(config_name=config_name, overrides=list(overrides))
        except (ConfigCompositionException, OmegaConfBaseException, HydraException) as err:
            raise ConfigError(translate(err)) from None


@dataclass(frozen=True)
class Checked:
    """What :func:`preflight` checked.

    Attributes:
        jobs: the number of jobs the command line makes (0: it only prints).
        hydra: the first job's config with its ``hydra`` node (:func:`check_hydra`), or None
            (``--help``, ``--info``, ...).
    """

    jobs: int
    hydra: DictConfig | None


def preflight(argv: list[str] | argparse.Namespace) -> Checked:
    """The one check of a command line (``sys.argv[1:]``, or the namespace
    :func:`rlfw.config.cli.parse_command_line` made of it) before anything runs: compose and
    validate every job, then what Hydra itself would stop on (:func:`check_hydra`: the override
    grammar, launcher and sweeper plugins, the run directory).

    Raises:
        ConfigError: the first job that does not compose or validate, or a Hydra-level problem,
            as one line.
    """
    args = parse_command_line(argv)
    if informational(args):
        return Checked(0, check_hydra(args) if args.cfg else None)
    user = [
        o
        for o in args.overrides
        if not o.lstrip("~+").startswith(("hydra.", "hydra/"))
        and o.split("=", 1)[0].lstrip("~+") not in _APP_KEYS
    ]
    for o in args.overrides:
        key, _, value = o.lstrip("+").partition("=")
        if key in ("hydra.run.dir", "hydra.sweep.dir") and not value.strip().strip("'\""):
            raise ConfigError(
                f"{key} is empty: the run's files would be written into the current directory; "
                f"name a directory, e.g. {key}=outputs/my_run"
            )
        if key in ("hydra.run.dir", "hydra.sweep.dir") and value and "${" not in value:
            check_writable(value, key)
    if not any(o.lstrip("+").startswith(("hydra.run.dir=", "hydra.sweep.dir=")) for o in args.overrides):
        check_writable(".", "the current directory (where outputs/ and multirun/ go)")
    check_hydra_plugins(args.overrides)
    jobs = expand_jobs(user, bool(args.multirun))
    seen: set[str] = set()
    for job in jobs:
        cfg = compose_config(job, args.config_name or "config")
        check_run_length(job, cfg)
        key = str(cfg)
        if key in seen:
            continue
        seen.add(key)
        ensure_valid(cfg)
    return Checked(len(jobs), check_hydra(args))


def check_hydra(argv: list[str] | argparse.Namespace) -> DictConfig | None:
    """Check what Hydra itself would stop on, so it stops as one line before any job starts:
    an override Hydra's grammar cannot parse (non-ASCII outside quotes), the rlfw config under
    ``--cfg``/``--resolve`` (Hydra prints it without :func:`preflight`), an unknown
    ``hydra/launcher`` or ``hydra/sweeper`` option or one whose plugin is not installed, and a
    run (or sweep) directory that does not resolve (unknown interpolation, missing environment
    variable) or cannot be created (``/proc/nope``: probed with a temporary directory in its
    nearest existing ancestor, removed at once).

    Returns:
        The first job's config with its ``hydra`` node (None for ``--help``, ``--info``, ...).

    Raises:
        ConfigError: one line naming the override or key.
    """
    import importlib.util
    import tempfile

    from hydra import compose
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    args = parse_command_line(argv)
    if args.help or args.hydra_help or args.info or args.shell_completion:
        return None
    register_schemas()  # the schemas and the ${rlfw_run_id:} resolver the run directory uses
    parser = OverridesParser.create()
    for o in args.overrides:
        try:
            parser.parse_overrides([o])
        except OverrideParseException as err:
            hint = ""
            if not o.isascii():
                key, _, value = o.partition("=")
                hint = f"; Hydra takes non-ASCII characters only in quotes: '{key}=\"{value}\"'"
            raise ConfigError(f"cannot parse the override {o}: {str(err).splitlines()[0]}{hint}") from None
    multirun = bool(args.multirun)
    try:
        job = expand_jobs(list(args.overrides), multirun)[0]
    except Exception:  # a sweep only the sweeper understands: compose the fixed overrides
        job = [o for o in args.overrides if "," not in o and "(" not in o]
    with hydra_context():
        try:
            full = compose(config_name=args.config_name or "config", overrides=job, return_hydra_config=True)
        except (HydraException, OmegaConfBaseException) as err:
            import re

            missing = re.search(r"In 'hydra/(launcher|sweeper)/(\w+)': Could not load '(hydra/[\w/]+)'", str(err))
            if missing:  # the option's file is rlfw's, its defaults come with the plugin
                group, choice, base = missing.groups()
                raise ConfigError(
                    f"hydra/{group}={choice} needs a Hydra plugin that is not installed (it provides {base}); "
                    f"install the plugin (see README, Sweeps and clusters) or choose another hydra/{group}"
                ) from None
            raise ConfigError(translate(err)) from None
        if args.cfg:  # printing the config: nothing is run or written
            return full
        if multirun:
            for group in ("launcher", "sweeper"):
                target = str(OmegaConf.select(full, f"hydra.{group}._target_", default="") or "")
                module = target.rsplit(".", 1)[0]
                try:
                    found = bool(module) and importlib.util.find_spec(module) is not None
                except (ImportError, ValueError):
                    found = False
                if module and not found:
                    choice = OmegaConf.select(full, f"hydra.runtime.choices.hydra/{group}", default="?")
                    raise ConfigError(
                        f"hydra/{group}={choice} needs a Hydra plugin that is not installed (no module {module}); "
                        f"install the plugin (see README, Sweeps and clusters) or choose another hydra/{group}"
                    )
        key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
        hydra_config = HydraConfig.instance()
        saved = hydra_config.cfg  # put back after: rlfw.train runs this in the caller's process
        hydra_config.set_config(full)  # for ${hydra:...} in the directory pattern
        try:
            directory = str(OmegaConf.select(full, key, throw_on_resolution_failure=True))
        except OmegaConfBaseException as err:
            raise ConfigError(f"{key} does not resolve: {str(err).splitlines()[0]}") from None
        finally:
            hydra_config.cfg = saved  # type: ignore[assignment]
    probe = Path(directory).expanduser().absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:  # the nearest existing ancestor must take a new directory (os.access says yes to root)
        Path(tempfile.mkdtemp(prefix=".rlfw-probe-", dir=probe)).rmdir()
    except OSError as err:
        raise ConfigError(f"{key}={directory}: cannot create a directory in {probe}: {err.strerror}") from None
    return full


# the configs this process has validated (their str(): the composed tree, interpolations unresolved)
_VALIDATED: set[str] = set()


def ensure_valid(cfg: DictConfig) -> None:
    """Validate ``cfg`` (:func:`rlfw.config.validate.validate`) unless this process already
    validated an equal config: the edge (preflight, resume) validates once, and the Hydra job
    (:func:`rlfw.lifecycle.run_job`) re-checks only a config preflight did not see (a sweeper's
    trial, a direct caller).

    Raises:
        ConfigError: the first rule broken, as one line.
    """
    key = str(cfg)
    if key in _VALIDATED:
        resolve_total_steps(cfg)  # the one change validate makes, on this copy too
        return
    try:
        validate(cfg)
    except OmegaConfBaseException as err:
        raise ConfigError(translate(err)) from None
    _VALIDATED.add(key)


def check_hydra_plugins(overrides: list[str]) -> None:
    """Refuse a ``hydra/sweeper=`` or ``hydra/launcher=`` choice whose Hydra plugin (or the
    library it drives) is not installed, with the install command, instead of Hydra's
    ``Could not load 'hydra/sweeper/optuna'`` after it started. Checked with
    :func:`importlib.util.find_spec` (nothing is imported).

    Raises:
        ConfigError: one line naming the override, the plugin and how to install it.
    """
    import importlib.util

    for o in overrides:
        key, _, value = o.lstrip("+").partition("=")
        if key == "hydra/sweeper" and value in REMOVED_SWEEPERS:
            raise ConfigError(f"{key}={value}: {REMOVED_SWEEPERS[value]}")
        need = HYDRA_PLUGINS.get((key, value))
        if need is None:
            continue
        what, modules, install = need
        for module in modules:
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):  # a parent package missing, or a broken one
                found = False
            if not found:
                raise ConfigError(
                    f"{key}={value} needs {what} ({module} is not installed); install it with: {install}"
                )


def check_writable(path: str, key: str) -> None:
    """Refuse a run directory that cannot be made or written: its nearest existing ancestor must
    be a directory this process may write (checked without creating anything).

    Raises:
        ConfigError: one line naming ``key`` and the obstacle.
    """
    p = Path(path).expanduser().absolute()
    probe = p
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{key}={path}: cannot create it, {probe} is a file, not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}={path}: {probe} is not writable by this user")


def cfg_get(cfg: Any, dotted: str, default: Any = None) -> Any:
    """``cfg.a.b`` by dotted key, or ``default``."""
    return OmegaConf.select(cfg, dotted, default=default)
