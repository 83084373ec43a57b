"""rlfw's Python API: train a run, load its policy, act in the env.

::

    import gymnasium as gym
    import rlfw

    run_dir = rlfw.train(["env=FetchReach-v4", "train.epochs=1", "hydra.run.dir=runs/reach"])
    policy = rlfw.load(run_dir)
    env = gym.make(policy.env_id)
    obs, _ = env.reset(seed=0)
    action, _ = policy.predict(obs)                  # Stable-Baselines3's signature
    obs, reward, terminated, truncated, info = env.step(action)

:func:`train` runs the same Hydra app as ``python -m rlfw`` (same composition, checks and run
directory files), so ``python -m rlfw resume=<run_dir>`` and ``python -m rlfw.evaluate
run_dir=<run_dir>`` work on its runs. :func:`load` builds the policy of a run's checkpoint;
:class:`Policy` takes observations as the Gymnasium env returns them and returns actions in the
env's own action bounds.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from rlfw.core import Callback
from rlfw.errors import ConfigError

__all__ = ["Policy", "check_device", "load", "load_checkpoint", "train"]


# ---------------------------------------------------------------------------------------- train


def train(overrides: Sequence[str] = (), callbacks: Sequence[Callback] = ()) -> Path:
    """Train one run, exactly as ``python -m rlfw <overrides>`` does; returns its run directory.

    The overrides are the CLI's (``"algo=ddpg"``, ``"env=FetchPush-v4"``, ``"train.epochs=5"``,
    ``"hydra.run.dir=runs/push"``). They are composed and validated first, as the CLI's
    preflight does, so a bad one raises before any simulator starts. The run is Hydra's job:
    the directory is ``hydra.run.dir`` (default ``outputs/<date>/<time>_<pid>-<hex>_<algo>_<buffer>_<noise>_<env>``,
    relative to the current directory) and gets the CLI's files (``.hydra/config.yaml``,
    ``.hydra/overrides.yaml``, ``.hydra/hydra.yaml``, ``rlfw.log``, ``metrics.csv``,
    ``episodes.csv``, ``status.json``, ``checkpoints/last.pt``, plots).

    Hydra configures logging for the run (console and ``<run_dir>/rlfw.log``) as the CLI does;
    the root logger's handlers and level are restored when the run returns.

    User callbacks (instances of :class:`rlfw.core.Callback`, like SB3's ``callback=``) are
    called after the built-in ones (files, loggers, ``eval.stop_at``) with the training loop:
    ``on_start(loop)``, ``on_cycle(loop)``, ``on_epoch(loop, row)`` (``row``: the epoch's
    metrics.csv row as a dict), ``on_end(loop)``. A callback ends the run early with
    ``loop.request_stop(reason)``: the epoch is completed (row, checkpoint, other callbacks),
    then the run ends with ``status.json`` ``finished`` and ``stop_reason``::

        class StopAtReturn(rlfw.core.Callback):
            def on_epoch(self, loop, row):
                if row["eval_return"] > -200:
                    loop.request_stop(f"eval_return {row['eval_return']:.0f} > -200")

    Args:
        overrides: Hydra overrides of one job (``key=value``, ``group=option``). Sweeps
            (``-m``, ``a,b`` values), flags (``--cfg``) and ``resume=`` are not taken: use the CLI.
        callbacks: user callbacks, run in this process (so ``train.workers`` must be 1).

    Returns:
        The run directory (absolute).

    Raises:
        ConfigError: an unknown option or key, a wrongly typed value, a rule broken across keys,
            a flag or ``resume=`` (one line, before any simulator starts; a HER buffer on an
            env without goals is found when the env is built, before training); a callback
            that is not a :class:`rlfw.core.Callback`; callbacks with ``train.workers`` > 1.
        Exception: whatever a failed run raised (``status.json`` says ``failed`` if training
            had started).
    """
    from rlfw.config.preflight import free_form_overrides

    overrides = free_form_overrides([str(o) for o in overrides])
    flags = [o for o in overrides if o.startswith("-")]
    if flags:
        raise ConfigError(
            f"rlfw.train takes overrides (key=value, group=option) only; got {' '.join(flags)} "
            "(sweeps and flags: python -m rlfw)"
        )
    if any(o.split("=", 1)[0].lstrip("~+") == "resume" for o in overrides):
        raise ConfigError("rlfw.train does not resume runs; use python -m rlfw resume=<run_dir>")
    callbacks = list(callbacks)
    wrong = [type(cb).__name__ for cb in callbacks if not isinstance(cb, Callback)]
    if wrong:
        raise ConfigError(f"rlfw.train(callbacks=...) takes rlfw.core.Callback instances; got {', '.join(wrong)}")

    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import DictConfig, OmegaConf

    from rlfw.config.cli import run_hydra_app
    from rlfw.config.paths import config_dir
    from rlfw.config.preflight import preflight
    from rlfw.lifecycle import run_job

    outcome: dict[str, Any] = {}

    def job(cfg: DictConfig) -> None:  # the Hydra task: errors are kept, not logged by Hydra
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        outcome["run_dir"] = run_dir
        try:
            outcome["row"] = run_job(cfg, run_dir, callbacks=callbacks)
        except Exception as err:  # re-raised below, after Hydra is cleared
            outcome["error"] = err

    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    # a Hydra app calling this: its Hydra is put back afterwards (GlobalHydra.instance() each
    # time: Hydra's initialize_config_dir replaces the singleton object when it exits)
    saved_hydra = GlobalHydra.instance().hydra
    GlobalHydra.instance().clear()
    try:
        checked = preflight(overrides)  # the CLI's one check, on rlfw's conf/: ConfigError in one line
        if callbacks:  # the workers would be other processes: refused before a run dir exists
            from rlfw.config.preflight import compose_config

            workers = compose_config([o for o in overrides if not o.lstrip("~+").startswith(("hydra.", "hydra/"))]).train.workers
            if workers > 1:
                raise ConfigError(
                    f"rlfw.train(callbacks=...) runs the callbacks in this process; train.workers={workers} "
                    "trains in other processes: use train.workers=1"
                )
        full = checked.hydra  # the first job's config with its hydra node
        if full is not None and OmegaConf.select(full, "hydra.mode") == RunMode.MULTIRUN:
            raise ConfigError("rlfw.train runs one job; hydra.mode=MULTIRUN sweeps need python -m rlfw -m")
        try:  # Hydra's public entry point, as python -m rlfw runs it
            run_hydra_app(job, list(overrides), config_path=str(config_dir()), config_name="config")
        except SystemExit as stop:  # Hydra printed its error and exited
            if "error" not in outcome:
                raise ConfigError(f"Hydra stopped rlfw.train (exit status {stop.code}); its message is above") from None
    finally:
        GlobalHydra.instance().clear()
        GlobalHydra.instance().hydra = saved_hydra
        for handler in root.handlers[:]:
            if handler not in saved_handlers:
                root.removeHandler(handler)
                handler.close()
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
    if "error" in outcome:
        raise outcome["error"]
    return Path(outcome["run_dir"])


# ----------------------------------------------------------------------------------------- load


def load_checkpoint(path: str | Path, device: str = "cpu") -> dict[str, Any]:
    """Read a checkpoint file (``checkpoints/last.pt``) into its state dict, with the safe
    loader (:func:`rlfw.training.checkpoint.safe_load`: tensors and plain data, never code).

    Raises:
        FileNotFoundError: no such file.
        ConfigError: the file is refused (it needs other types) or truncated.
    """
    from rlfw.training.checkpoint import safe_load

    return safe_load(path, map_location=device)  # type: ignore[no-any-return]


def load(run_dir: str | Path, checkpoint: str = "last", device: str = "cpu", imports: Sequence[str] = ()) -> Policy:
    """The policy of a run's checkpoint.

    Builds the run's agent from the config saved in the checkpoint (``rlfw.build``), loads the
    networks and observation normalisers, and makes one env to read its spaces (closed again).
    The checkpoint is read onto the CPU and its tensors then moved to ``device`` (random
    generator states stay on the CPU, where torch keeps them).

    Args:
        run_dir: a run directory (what :func:`train` returns, or ``outputs/<date>/<time>_...``).
        checkpoint: ``"last"`` (``checkpoints/last.pt``; ``previous.pt`` when it is truncated or
            lost), ``"best"`` (``checkpoints/best.pt``: the best evaluation's ``eval.metric``),
            or a file name in ``<run_dir>/checkpoints/``.
        device: the torch device to act on (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
        imports: the modules the run's config imports to make its env (``env.imports``, a
            ``module:Env-v0`` id) that you trust; rlfw imports none a run directory names
            unless it is named here.

    Raises:
        FileNotFoundError: ``run_dir`` does not exist, or has no such checkpoint (``"best"``:
            no evaluation has had a finite ``eval.metric`` yet).
        ValueError: ``run_dir`` is a file, not a directory; ``device`` is not a torch device.
        ConfigError (a ValueError): ``device`` is not present on this host (CUDA or MPS
            missing, a CUDA index beyond the devices); ``checkpoint`` is not a name; the file
            is not a policy checkpoint (a buffer file), is refused (it needs types beyond
            tensors and plain data) or unreadable (and so is ``previous.pt``), or its env is not
            installed or does not fit its config; the config names modules to import that
            ``imports`` does not.
    """
    from rlfw.envs import check_trusted
    from rlfw.training.checkpoint import check_policy_state, checkpoint_file, load_latest

    run = Path(run_dir).expanduser()
    if not run.exists():
        raise FileNotFoundError(f"no run directory at {run}")
    if not run.is_dir():
        raise ValueError(f"{run} is a file: rlfw.load takes a run directory (the one holding checkpoints/)")
    check_device(device)
    path = checkpoint_file(run, checkpoint)
    try:  # last.pt falls back to previous.pt when it is truncated or lost (one warning)
        state, _ = load_latest(path.parent, path.name, map_location="cpu", check=check_policy_state)
    except FileNotFoundError:
        hint = " (written at the first evaluation with a finite eval.metric)" if path.name == "best.pt" else ""
        raise FileNotFoundError(f"no rlfw checkpoint at {path}{hint}") from None
    saved_env = state["config"].get("env") if isinstance(state["config"], dict) else None
    check_trusted(saved_env or {}, imports, str(run), "rlfw.load(run_dir, imports=[{modules}])")
    return Policy.from_state(state, device)


def check_device(device: str) -> None:
    """Whether ``device`` names a torch device present on this host.

    Raises:
        ValueError: not a torch device string.
        ConfigError (a ValueError): one line: the device's backend (CUDA, MPS) is not available
            here, or its index is beyond the devices present.
    """
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device={device!r} is not a torch device ({err})") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device={device!r}: this host has no CUDA device (torch.cuda.is_available() is False); use device='cpu'")
        if dev.index is not None and dev.index >= count:
            raise ConfigError(f"device={device!r}: this host has {count} CUDA device(s) (cuda:0 to cuda:{count - 1})")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device={device!r}: MPS is not available on this host; use device='cpu'")


class Policy:
    """A trained policy (DDPG, TD3, SAC, TQC, CrossQ) acting in its env's own terms.

    Attributes:
        env_id: the resolved Gymnasium id the run trained on (``FetchReach-v4``).
        observation_space: the env's observation space (a ``Dict`` with ``observation``,
            ``achieved_goal``, ``desired_goal`` for goal envs, else a ``Box``).
        action_space: the env's own action space (``Box``); :meth:`predict` returns actions in
            its bounds, not in rlfw's normalised [-1, 1].
        agent: the :class:`rlfw.core.Agent` (its ``act`` works in [-1, 1]).
        config: the run's composed config (``DictConfig``).
        info: the :class:`rlfw.core.EnvInfo` of the env.
        device: the torch device the networks are on.

    ``exploration`` (constructor only): the :class:`rlfw.core.Exploration` attached to ``agent``;
    one with ``parameter_noise`` (NoisyNet) lets ``predict(deterministic=False)`` sample weights.
    """

    def __init__(self, agent: Any, config: Any, env_id: str, info: Any, observation_space: gym.Space,
                 action_space: gym.spaces.Box, device: str = "cpu", exploration: Any = None) -> None:  # fmt: skip
        self.agent = agent
        self.config = config
        self.env_id = env_id
        self.info = info
        self.observation_space = observation_space
        self.action_space = action_space
        self.device = device
        if info.goal:
            assert isinstance(observation_space, gym.spaces.Dict)
            self._obs_shape = tuple(observation_space["observation"].shape or ())
            self._goal_shape: tuple[int, ...] = tuple(observation_space["desired_goal"].shape or ())
        else:
            self._obs_shape = tuple(observation_space.shape or ())
            self._goal_shape = ()
        self._act_shape = tuple(action_space.shape or ())
        low, high = action_space.low.astype(np.float64), action_space.high.astype(np.float64)
        # the inverse of rlfw's [-1, 1] rescaling, as gymnasium.wrappers.RescaleAction applies it
        self._rescale = not (np.allclose(low, -1.0) and np.allclose(high, 1.0))
        if self._rescale:
            from gymnasium.wrappers.utils import rescale_box

            _, _, self._to_env = rescale_box(action_space, np.float32(-1.0), np.float32(1.0))
        # parameter noise (NoisyNet) samples the policy's weights: deterministic=False draws one
        self._exploration = exploration if exploration is not None and exploration.parameter_noise else None
        self._stochastic = bool(getattr(agent, "stochastic", False))  # the agent says (SAC, TQC, CrossQ)

    @classmethod
    def from_state(cls, state: dict[str, Any], device: str = "cpu") -> Policy:
        """A policy from a checkpoint's state (``config`` and ``agent`` entries).

        Raises:
            ConfigError: the checkpoint's env is not installed or does not fit its config.
        """

        from rlfw.build import build_policy
        from rlfw.core.runfiles import plain_config

        cfg = plain_config(state["config"], "the checkpoint's config")
        agent, exploration, env = build_policy(cfg, state["agent"], device=device)
        ref = env.ref_env
        # family.make wraps envs whose bounds are not [-1, 1] in RescaleAction: its inner env
        # has the bounds the user's gym.make(env_id) env has
        own = ref.env if isinstance(ref, gym.wrappers.RescaleAction) else ref
        space = own.action_space
        assert isinstance(space, gym.spaces.Box)
        return cls(agent, cfg, env.env_id, env.info, ref.observation_space, space, device, exploration)

    def __repr__(self) -> str:
        return (
            f"Policy(env_id={self.env_id!r}, algo={self.config.algo.name!r}, "
            f"action_space={self.action_space}, device={self.device!r})"
        )

    def predict(
        self, observation: Any, state: Any = None, episode_start: Any = None, deterministic: bool = True
    ) -> tuple[np.ndarray, Any]:
        """Stable-Baselines3's ``predict``: ``action, state = policy.predict(obs)``.

        Args:
            observation: as for :meth:`act` (one observation or a batch).
            state: the recurrent state SB3 passes through; rlfw's policies are not recurrent, so
                it is returned as given (None).
            episode_start: SB3's episode-start mask for recurrent policies; not used.
            deterministic: as for :meth:`act`.

        Returns:
            ``(actions, state)``: the actions of :meth:`act` (``(act_dim,)`` or
            ``(N, act_dim)``) and ``state`` unchanged.

        Raises:
            TypeError, ValueError, NotImplementedError: as :meth:`act`.
        """
        return self.act(observation, deterministic=deterministic), state

    def act(self, obs: Any, deterministic: bool = True) -> np.ndarray:
        """Actions for observations as the env returns them (the action alone; :meth:`predict`
        is the same with Stable-Baselines3's signature).

        Args:
            obs: goal envs: a dict with ``observation`` ``(obs_dim,)`` and ``desired_goal``
                ``(goal_dim,)`` (``achieved_goal`` is not used), or the same with a leading batch
                axis ``(N, ...)`` on each value (a vector env's observation); other envs: an
                array ``(obs_dim,)`` or ``(N, obs_dim)``. The shapes are the env's
                observation space's (``obs_dim`` may itself be several axes).
            deterministic: True: the policy's deterministic action (what evaluation uses):
                ``pi(s)`` for DDPG and TD3, the mean action ``tanh(mu(s))`` for SAC, TQC and
                CrossQ. False: SAC, TQC and CrossQ sample their stochastic policy
                ``tanh(mu + sigma * eps)`` (from the agent's seeded generator); DDPG and TD3
                sample only a run trained with ``noise=noisynet`` (a fresh sample of the actor's
                weight noise); their Gaussian or OU action noise is exploration, not part of
                the learned policy, so NotImplementedError is raised otherwise.

        Returns:
            float actions (the action space's dtype) in the env's own bounds
            (``action_space.low`` to ``high``, rescaled from the actor's [-1, 1] with the
            affine map Gymnasium's ``RescaleAction`` uses): ``(act_dim,)`` for one observation,
            ``(N, act_dim)`` for a batch.

        Raises:
            TypeError: a goal env's observation is not a dict, or another env's is.
            ValueError: an observation or goal whose shape fits neither one nor a batch,
                batches of different sizes, or NaN or infinite values in them.
            NotImplementedError: ``deterministic=False`` for a DDPG or TD3 run without NoisyNet.
        """
        o, g, single = self._inputs(obs)
        if deterministic:
            actions = self.agent.act(o, g, explore=False)
        elif self._stochastic:
            actions = self.agent.act(o, g, explore=True)  # a sample of the squashed Gaussian
        else:
            if self._exploration is None:
                raise NotImplementedError(
                    f"{self.config.algo.name} learns a deterministic policy (its action noise "
                    f"{self.config.noise.name!r} explores, it is not part of the policy); "
                    "deterministic=False needs a run trained with noise=noisynet, or a stochastic "
                    "algorithm (sac, tqc, crossq)"
                )
            self._exploration.resample()
            actions = self.agent.act(o, g, explore=True)
        a = np.asarray(actions, dtype=np.float32).reshape(len(o), *self._act_shape)
        if self._rescale:
            a = self._to_env(a)
        a = np.clip(a, self.action_space.low, self.action_space.high).astype(self.action_space.dtype)
        return a[0] if single else a

    def _inputs(self, obs: Any) -> tuple[np.ndarray, np.ndarray | None, bool]:
        """(observations [N, obs_dim], goals [N, goal_dim] or None, whether obs was single)."""
        if self.info.goal:
            if not isinstance(obs, Mapping):
                raise TypeError(
                    f"{self.env_id} is a goal env: the policy takes its dict observation "
                    f"(observation, achieved_goal, desired_goal), not {type(obs).__name__}"
                )
            missing = [k for k in ("observation", "desired_goal") if k not in obs]
            if missing:
                raise ValueError(f"the observation dict lacks {', '.join(missing)} (keys: {', '.join(obs)})")
            o, single = _batch(obs["observation"], self._obs_shape, "observation")
            g, _ = _batch(obs["desired_goal"], self._goal_shape, "desired_goal")
            if len(o) != len(g):
                raise ValueError(f"{len(o)} observations but {len(g)} desired goals")
            return o, g, single
        if isinstance(obs, Mapping):
            raise TypeError(f"{self.env_id} has array observations; the policy got a dict")
        o, single = _batch(obs, self._obs_shape, "observation")
        return o, None, single


def _batch(x: Any, shape: tuple[int, ...], name: str) -> tuple[np.ndarray, bool]:
    """``x`` of ``shape`` or ``(N, *shape)`` as float32 ``[N, prod(shape)]``; whether it was single."""
    arr = np.asarray(x, dtype=np.float32)
    if not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise ValueError(
            f"{name} has NaN or infinite values (first at index {tuple(int(i) for i in bad)}); "
            "the policy's action for it would be meaningless"
        )
    if arr.shape == shape:
        return arr.reshape(1, -1), True
    if arr.ndim == len(shape) + 1 and arr.shape[1:] == shape:
        return arr.reshape(len(arr), -1), False
    raise ValueError(f"{name} has shape {arr.shape}; expected {shape} (one) or (N, {', '.join(map(str, shape))}) (a batch)")
