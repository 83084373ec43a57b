"""``python -m rlfw.tune [tune.KEY=VALUE ...] [search overrides] [overrides]``: Optuna tuning
that prunes, averages seeds and continues a stored study.

This entry point drives Optuna (4 or later) itself (ask-and-tell) and trains each trial in this
process with rlfw's own composition, validation, run-dir lock and training loop:

- Search space: overrides in Hydra's sweep syntax (Hydra's public override grammar,
  ``hydra.core.override_parser``), read as Optuna distributions by :func:`as_distribution`:
  ``algo.tau='interval(0.001,0.05)'`` (uniform), ``algo.actor_lr='tag(log,interval(1e-4,3e-3))'``
  (log-uniform), ``buffer.replay_k='choice(2,4,8)'`` (categorical),
  ``train.batch_size='range(64,257,64)'`` (integers 64..256 in steps of 64; the end is
  excluded, as in Hydra). Without any, :data:`DEFAULT_SPACE` is searched. Every other override
  is fixed for all trials (``env=FetchPush-v4 train.epochs=20``).
- Objective (maximised): each trial trains one run per seed of ``tune.seeds``; a run scores its
  ``eval.metric`` column (:func:`rlfw.core.eval_metric_name`: eval success rate
  on goal envs, eval return otherwise) in the final evaluation of the checkpoint it delivers
  (``tune.objective=final``: ``eval.final_episodes`` fresh episodes of ``best.pt``, chosen by
  the confirmation evaluations; the last evaluation when ``eval.final_episodes=0``) or
  averaged over all its evaluations (``auc``: the area under the eval curve divided by the
  number of evaluations); the trial's value is the mean over seeds.
- Pruning: after every evaluation the run's metric is reported to the trial as an intermediate
  value at step ``seed_index x train.epochs + epoch`` (so trials are compared at the same seed
  and epoch), and ``tune.pruner=median`` (``optuna.pruners.MedianPruner``: stop a trial whose
  best value so far is below the median of earlier trials at that step, after
  ``tune.startup_trials`` finished trials and ``tune.warmup_epochs`` steps) stops bad trials.
  A pruned run's ``status.json`` says ``pruned`` with the reason; the study goes on.
- Storage: Optuna's own. The default is an SQLite database, ``sqlite:///<tune.dir>/study.db``
  (open it with ``optuna-dashboard sqlite:///<tune.dir>/study.db``); any Optuna RDB URL works
  (``postgresql://...``), and ``journal:<file>`` keeps the study in Optuna's journal file
  (``JournalStorage``, for file systems where SQLite's locks fail, such as NFS on a
  cluster). Running the command again with the same study name and storage continues the
  study and adds ``tune.n_trials`` trials; trial numbers come from the storage, so two
  processes on one study never get the same number.

Hydra's Optuna sweeper (``hydra/sweeper=optuna``) is not supported: it pins optuna<3, whose
database storage fails with the SQLAlchemy 2 that Flower needs, and it can neither prune nor
average seeds.

Runs are written to ``<tune.dir>/trial_<number>/seed_<seed>/`` with the files of any rlfw run
(``.hydra/config.yaml`` and ``overrides.yaml``, metrics.csv, checkpoints, status.json,
rlfw.log), so ``python -m rlfw.report <tune.dir>``, ``rlfw.evaluate`` and ``resume=`` work on
them. Needs the ``tune`` extra: ``pip install -c constraints.txt -e '.[tune]'``.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from rlfw.core.contracts import Callback
from rlfw.errors import ConfigError, fail
from rlfw.training.rundir import release_run_lock

log = logging.getLogger("rlfw")

TUNE_HINT = "pip install -c constraints.txt -e '.[tune]'"
# The search space when the command line gives none: Hydra sweep syntax, one entry per key.
DEFAULT_SPACE = {
    "algo.actor_lr": "tag(log, interval(1e-4, 3e-3))",
    "algo.critic_lr": "tag(log, interval(1e-4, 3e-3))",
    "algo.tau": "interval(0.001, 0.05)",
    "buffer.replay_k": "choice(2, 4, 8)",
}
OBJECTIVES = ("final", "auc")
PRUNERS = ("median", "none")


@dataclass
class TuneConfig:
    """The ``tune.*`` keys of ``python -m rlfw.tune``."""

    n_trials: int = 20  # trials this invocation runs (a continued study grows by this many)
    seeds: list[int] = field(default_factory=lambda: [0])  # one run per seed per trial; mean
    objective: str = "final"  # final: the delivered checkpoint's final evaluation; auc: mean over the evaluations
    pruner: str = "median"  # median: optuna.pruners.MedianPruner; none: never prune
    startup_trials: int = 5  # MedianPruner n_startup_trials: finished trials before pruning
    warmup_epochs: int = 0  # MedianPruner n_warmup_steps: steps of a trial never pruned
    study_name: str = "rlfw"
    dir: str | None = None  # the trials' run directories; null: tune/<study_name>
    # Where the study is kept: an Optuna RDB URL (sqlite:///study.db) or journal:<file>
    # (Optuna's JournalStorage, for NFS). null: sqlite:///<dir>/study.db
    storage: str | None = None
    sampler_seed: int | None = None  # TPESampler seed (null: random)


def parse_tune(args: list[str]) -> TuneConfig:
    """The ``tune.*`` overrides merged into :class:`TuneConfig`, typed and checked.

    Raises:
        ConfigError: an unknown ``tune.`` key, a wrongly typed value or one out of range.
    """
    from omegaconf.errors import OmegaConfBaseException

    base = OmegaConf.structured(TuneConfig)
    try:
        node = OmegaConf.merge(base, OmegaConf.from_dotlist([a.split(".", 1)[1] for a in args]))
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or str(err).splitlines()[0]
        raise ConfigError(f"tune.{key}: {str(err).splitlines()[0]}; the keys of tune are: "
                          + ", ".join(f"tune.{k}" for k in base)) from None  # fmt: skip
    cfg: TuneConfig = OmegaConf.to_object(node)  # type: ignore[assignment]
    if cfg.objective not in OBJECTIVES:
        raise ConfigError(f"unknown tune.objective '{cfg.objective}'; choose one of: {', '.join(OBJECTIVES)}")
    if cfg.pruner not in PRUNERS:
        raise ConfigError(f"unknown tune.pruner '{cfg.pruner}'; choose one of: {', '.join(PRUNERS)}")
    for key in ("n_trials", "startup_trials", "warmup_epochs"):
        if getattr(cfg, key) < (1 if key == "n_trials" else 0):
            raise ConfigError(f"tune.{key}={getattr(cfg, key)} must be at least {1 if key == 'n_trials' else 0}")
    if not cfg.seeds or len(set(cfg.seeds)) != len(cfg.seeds) or min(cfg.seeds) < 0:
        raise ConfigError(f"tune.seeds={cfg.seeds} must be a non-empty list of distinct seeds >= 0")
    cfg.dir = cfg.dir or f"tune/{cfg.study_name}"
    cfg.storage = cfg.storage or f"sqlite:///{(Path(cfg.dir) / 'study.db').resolve()}"
    if cfg.storage.startswith("sqlite://") and cfg.storage.removeprefix("sqlite://").strip("/") in ("", ":memory:"):
        raise ConfigError(f"tune.storage={cfg.storage} names no database file, so the study would be lost; "
                          "give sqlite:///<file>.db")  # fmt: skip
    if "://" not in cfg.storage and not cfg.storage.startswith("journal:"):
        raise ConfigError(f"tune.storage={cfg.storage}: give an Optuna storage URL (sqlite:///<file>.db, the default "
                          "in tune.dir) or journal:<file> (Optuna's journal file); rlfw's JSON study file is gone")
    return cfg


def default_params() -> list[str]:
    """:data:`DEFAULT_SPACE` as ``key=sweep`` overrides."""
    return [f"{k}={v}" for k, v in DEFAULT_SPACE.items()]


def as_distribution(override: Any) -> Any:
    """The Optuna distribution of a Hydra sweep override, or None for a plain one.

    ``choice(a, b, ...)`` (and a shuffled range) -> ``CategoricalDistribution``;
    ``range(start, stop[, step])`` -> ``IntDistribution(start, last, step)`` where ``last`` is
    the range's last value (``stop`` excluded, as in Python), ``FloatDistribution`` with ``step``
    when any bound is a float; ``interval(low, high)`` -> ``FloatDistribution(low, high)``
    (``IntDistribution`` when both are ints), ``log=True`` when tagged ``log``.

    Raises:
        ConfigError: an empty range or an interval with ``low >= high``.
    """
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep, Transformer
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if not override.is_sweep_override():
        return None
    key, value = override.get_key_element(), override.value()
    if isinstance(value, ChoiceSweep) or (isinstance(value, RangeSweep) and value.shuffle):
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    if isinstance(value, RangeSweep):
        start, stop, step = value.start, value.stop, value.step
        if start is None or stop is None or not step or (stop - start) / step <= 0:
            raise ConfigError(f"{key}=range({start},{stop},{step}) holds no value")
        count = math.ceil((stop - start) / step)  # the range's values: start + i * step, i < count
        ends = sorted((start, start + (count - 1) * step))
        if all(isinstance(v, int) for v in (start, stop, step)):
            return IntDistribution(int(ends[0]), int(ends[1]), step=abs(int(step)))
        return FloatDistribution(float(ends[0]), float(ends[1]), step=abs(float(step)))
    if isinstance(value, IntervalSweep):
        low, high, log_scale = value.start, value.end, "log" in value.tags
        if low is None or high is None or not low < high or (log_scale and low <= 0):
            raise ConfigError(f"{key}=interval({low},{high}) needs low < high" + (" and low > 0 (log)" if log_scale else ""))
        return FloatDistribution(float(low), float(high), log=log_scale)
    raise ConfigError(f"{key}: {type(value).__name__} is not a search space (use choice, range or interval)")


def split_overrides(args: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Search space and fixed overrides, parsed with Hydra's public override grammar.

    Returns:
        ``({key: optuna distribution}, [fixed key=value overrides])``.

    Raises:
        ConfigError: an override Hydra cannot parse, or a sweep that holds no value.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(args)
    except HydraException as err:
        raise ConfigError(str(err).splitlines()[0]) from None
    space: dict[str, Any] = {}
    fixed: list[str] = []
    for arg, override in zip(args, parsed):
        dist = as_distribution(override)
        if dist is not None:
            space[override.get_key_element()] = dist
        else:
            fixed.append(arg)
    return space, fixed


def _as_override(key: str, value: Any) -> str:
    return f"{key}={'null' if value is None else value}"


def _first_point(dist: Any) -> Any:
    """A value inside ``dist`` (the choice's first, the interval's low end)."""
    if hasattr(dist, "choices"):
        return dist.choices[0]
    return dist.low


class OptunaReport(Callback):
    """Reports each evaluation's ``metric`` to an Optuna trial and raises ``optuna.TrialPruned``
    when the trial's pruner says so (``trial.report`` / ``trial.should_prune``).

    Args:
        trial: the running ``optuna.trial.Trial``.
        metric: ``eval.metric`` (``auto``, ``eval_success_rate``, ``eval_return``).
        step_offset: added to the epoch number (``seed_index x train.epochs``).
    """

    def __init__(self, trial: Any, metric: str, step_offset: int) -> None:
        self.trial, self.metric, self.step_offset = trial, metric, step_offset
        self.values: list[float] = []  # this run's metric at each evaluation
        # the final evaluation of what the run delivers (eval.final_episodes episodes), or None
        self.delivered: float | None = None

    def on_end(self, loop: Any) -> None:
        delivered = getattr(loop, "delivered", None)  # TrainLoop.final_evaluation
        if not delivered:
            return
        from rlfw.training.evaluation import eval_metric_name

        key = "success_rate" if eval_metric_name(self.metric, bool(loop.info.goal)) == "eval_success_rate" else "return_mean"
        value = delivered.get(key)
        self.delivered = float(value) if value is not None and math.isfinite(float(value)) else None

    def on_epoch(self, loop: Any, row: dict[str, Any]) -> None:
        from optuna import TrialPruned

        from rlfw.training.evaluation import eval_metric_name

        name = eval_metric_name(self.metric, bool(loop.info.goal))
        value = float(row.get(name, math.nan))
        if not math.isfinite(value):  # no evaluation this epoch (eval.every > 1)
            return
        self.values.append(value)
        step = self.step_offset + int(row["epoch"])
        self.trial.report(value, step)
        if self.trial.should_prune():
            raise TrialPruned(f"trial {self.trial.number} pruned at epoch {int(row['epoch'])} (step {step}): "
                              f"{name}={value:g} is below the median of earlier trials")  # fmt: skip


def _write_run_files(run_dir: Path, cfg: DictConfig, overrides: list[str]) -> None:
    """``.hydra/config.yaml`` and ``.hydra/overrides.yaml`` as Hydra writes them."""
    hydra_dir = run_dir / ".hydra"
    hydra_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, hydra_dir / "config.yaml")
    (hydra_dir / "overrides.yaml").write_text(yaml.safe_dump(list(overrides)))


def _mark_pruned(run_dir: Path, reason: str) -> None:
    """Rewrite ``status.json`` as ``pruned`` with the reason (atomically, never through a link;
    :func:`rlfw.training.outputs.write_status`)."""
    from rlfw.core.runfiles import MAX_META_BYTES, load_json, read_text
    from rlfw.training.outputs import write_status

    path = run_dir / "status.json"
    try:
        data = load_json(read_text(path, MAX_META_BYTES), path) if path.exists() else {}
    except (OSError, ValueError, ConfigError):
        data = {}
    data = data if isinstance(data, dict) else {}
    data.update(status="pruned", reason=reason)
    data.pop("error", None)
    write_status(path, data)


def claim_trial_dir(root: Path, number: int, seed: int) -> Path:
    """The run directory of trial ``number``'s ``seed``, held with the run-dir lock like any run:
    ``<root>/trial_<number>/seed_<seed>``, or ``trial_<number>.<k>`` (k = 1, 2, ...) when that
    one is locked by another process (a second ``rlfw.tune`` on the same ``tune.dir``) or holds
    a run already (the files of a tuning process that was killed): two trials never share a
    directory, and a dead trial's files are never appended to.

    Raises:
        OSError: the directory cannot be created.
    """
    from rlfw.training.rundir import RunDirLocked, acquire_run_lock, holds_run

    for k in range(10_000):
        name = f"trial_{number}" if k == 0 else f"trial_{number}.{k}"
        run_dir = (root / name / f"seed_{seed}").resolve()
        try:
            acquire_run_lock(run_dir)
        except RunDirLocked:
            continue
        if not holds_run(run_dir):
            if k:
                log.info("trial %d: %s is taken; this trial runs in %s", number, root / f"trial_{number}", run_dir)
            return run_dir
        release_run_lock(run_dir)
    raise ConfigError(f"tune.dir={root}: no free directory for trial {number}")


def run_trial(trial: Any, tune: TuneConfig, space: dict[str, Any], fixed: list[str]) -> float:
    """Train one run per seed with the trial's parameters; returns the mean objective.

    Raises:
        optuna.TrialPruned: the pruner stopped the trial (the run's status.json says pruned).
        ConfigError: the trial's config breaks a rule.
    """
    from optuna import TrialPruned

    from rlfw.config.preflight import compose_config
    from rlfw.config.validate import validate
    from rlfw.training.start import start_run

    params = [_as_override(k, trial.params[k]) for k in space]
    scores = []
    for i, seed in enumerate(tune.seeds):
        overrides = [*fixed, *params, f"seed={seed}"]
        cfg = compose_config(overrides)
        validate(cfg)
        run_dir = claim_trial_dir(Path(tune.dir), trial.number, seed)  # type: ignore[arg-type]
        try:
            _write_run_files(run_dir, cfg, overrides)
        except BaseException:
            release_run_lock(run_dir)
            raise
        trial.set_user_attr(f"run_dir_seed_{seed}", str(run_dir))
        handler = logging.FileHandler(run_dir / "rlfw.log")
        handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
        logging.getLogger().addHandler(handler)
        report = OptunaReport(trial, cfg.eval.metric, i * cfg.train.epochs)
        try:
            start_run(cfg, run_dir, multirun=True, callbacks=[report])
        except TrialPruned as err:
            _mark_pruned(run_dir, str(err))
            log.info("%s", err)
            raise
        finally:
            logging.getLogger().removeHandler(handler)
            handler.close()
            release_run_lock(run_dir)
        if not report.values:
            raise ConfigError(f"trial {trial.number}: no evaluation in {run_dir} (eval.every > train.epochs?)")
        if tune.objective == "final":  # what the run delivers; the last evaluation without eval.final_episodes
            scores.append(report.delivered if report.delivered is not None else report.values[-1])
        else:
            scores.append(sum(report.values) / len(report.values))
    return sum(scores) / len(scores)


def check(tune: TuneConfig, space: dict[str, Any], fixed: list[str]) -> None:
    """Compose and validate a trial's config (the search space at its first point) for every
    seed before any simulator starts.

    Raises:
        ConfigError: a bad key or value, as the CLI reports it.
    """
    from rlfw.config.preflight import compose_config
    from rlfw.config.validate import check_run_length, validate

    if not space:
        raise ConfigError("nothing to tune: give a search space such as algo.tau='interval(0.001,0.05)'")
    point = [_as_override(k, _first_point(d)) for k, d in space.items()]
    for seed in tune.seeds:
        cfg = compose_config([*fixed, *point, f"seed={seed}"])
        check_run_length(fixed, cfg)
        validate(cfg)


def quiet_optuna_logs() -> None:
    """Optuna's and alembic's INFO lines off: rlfw logs the study's state itself."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)


def open_storage(storage: str) -> Any:
    """The Optuna storage that ``tune.storage`` names: ``journal:<file>`` ->
    ``JournalStorage(JournalFileBackend(file))``; anything else is an RDB URL, returned as is
    (``optuna.create_study`` opens it).

    Raises:
        ConfigError: the journal file's directory cannot be created.
    """
    if not storage.startswith("journal:"):
        return storage
    import stat

    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = Path(storage.removeprefix("journal:")).expanduser()
    if not path.name:
        raise ConfigError(f"tune.storage={storage}: give the journal's file, journal:<file>")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        mode = os.lstat(path).st_mode if os.path.lexists(path) else None
    except OSError as err:
        raise ConfigError(f"tune.storage={storage}: {err.strerror}: {path.parent}") from None
    if mode is not None and not stat.S_ISREG(mode):
        raise ConfigError(f"tune.storage={storage}: {path} is not a regular file (a link, a directory, a device "
                          "or a FIFO); the journal must be a file of its own")  # fmt: skip
    return JournalStorage(JournalFileBackend(str(path)))


def tune(args: list[str]) -> Any:
    """Run ``tune.n_trials`` trials of the study described by ``args``; returns the study.

    Raises:
        ConfigError: a bad ``tune.*`` key or value, a bad override, a bad storage URL.
        ImportError: optuna is missing or older than 4 (the tune extra).
    """
    import optuna

    if int(optuna.__version__.split(".")[0]) < 4:
        raise ImportError(f"optuna {optuna.__version__} is installed; rlfw.tune needs optuna>=4", name="optuna")
    quiet_optuna_logs()

    from rlfw.config.preflight import free_form_overrides

    tune_args = [a for a in args if a.split("=", 1)[0].startswith("tune.")]
    rest = free_form_overrides([a for a in args if a not in tune_args])
    tc = parse_tune(tune_args)
    space, fixed = split_overrides(rest)
    if not space:
        space, _ = split_overrides(default_params())
        space = {k: d for k, d in space.items() if not any(f.split("=", 1)[0].lstrip("+~") == k for f in fixed)}
    check(tc, space, fixed)
    Path(tc.dir).mkdir(parents=True, exist_ok=True)  # type: ignore[arg-type]
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=tc.startup_trials, n_warmup_steps=tc.warmup_epochs)
              if tc.pruner == "median" else optuna.pruners.NopPruner())  # fmt: skip
    sampler = optuna.samplers.TPESampler(seed=tc.sampler_seed)
    try:
        study = optuna.create_study(storage=open_storage(str(tc.storage)), study_name=tc.study_name,
                                    direction="maximize", sampler=sampler, pruner=pruner,
                                    load_if_exists=True)  # fmt: skip
    except ConfigError:
        raise
    except Exception as err:  # a bad URL, an unopenable file, a database of another program
        first = (str(err).splitlines() or [type(err).__name__])[0]
        raise ConfigError(f"tune.storage={tc.storage}: {type(err).__name__}: {first}") from None
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise ConfigError(f"tune.storage={tc.storage}: study '{tc.study_name}' minimises; rlfw.tune maximises")
    log.info("study %s in %s: %d trials so far", tc.study_name, tc.storage, len(study.trials))
    from optuna.trial import TrialState

    for _ in range(tc.n_trials):
        trial = study.ask(fixed_distributions=space)
        try:
            value = run_trial(trial, tc, space, fixed)
        except optuna.TrialPruned:
            study.tell(trial, state=TrialState.PRUNED)
        except (KeyboardInterrupt, SystemExit):
            study.tell(trial, state=TrialState.FAIL)
            raise
        except Exception as err:  # a failed trial is recorded; the study goes on
            log.error("trial %d failed: %s: %s", trial.number, type(err).__name__, err)
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, value)
            log.info("trial %d: %g with %s", trial.number, value, trial.params)
    return study


def summary(study: Any) -> str:
    """One line per state and the best trial."""
    from optuna.trial import TrialState

    counts = {s.name.lower(): sum(t.state == s for t in study.trials)
              for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}  # fmt: skip
    line = f"study {study.study_name}: {len(study.trials)} trials (" + ", ".join(f"{v} {k}" for k, v in counts.items()) + ")"
    if counts["complete"]:
        line += f"; best trial {study.best_trial.number}: {study.best_value:g} with {study.best_params}"
    return line


def main(argv: list[str] | None = None) -> None:
    """Console entry point: one line and exit 2 for bad input or a missing extra."""
    args = sys.argv[1:] if argv is None else argv
    if "--help" in args or "-h" in args:
        print(__doc__)
        return
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    try:
        study = tune(args)
    except ConfigError as err:
        raise fail("rlfw", err) from None
    except ImportError as err:
        raise fail("rlfw", err, bad_input=(ImportError,), message=f"python -m rlfw.tune needs optuna>=4 ({err}): "
                   f"{TUNE_HINT}") from None  # fmt: skip
    print(summary(study))


if __name__ == "__main__":
    main()
