"""The one training loop for every algo x buffer x noise x env combination.

Per epoch: ``cycles_per_epoch`` times (collect ``steps_per_cycle`` env steps from the vector
env into the buffer, then run ``updates_per_cycle`` gradient steps), then evaluate the
deterministic policy, append a row to ``metrics.csv``, write ``checkpoints/last.pt``. The HER
paper's schedule (epochs x cycles x episodes, 40 updates a cycle) and the TD3 paper's (one
update per env step) are two settings of this loop.

Files in the run directory (Hydra's output dir):

- ``.hydra/`` the resolved config (Hydra's),
- ``metrics.csv`` one row per epoch (:data:`METRIC_COLUMNS`),
- ``episodes.csv`` one row per finished training episode (:data:`EPISODE_COLUMNS`),
- ``checkpoints/last.pt`` networks, targets, optimisers, normalisers, counters (atomic write),
- ``status.json`` ``running`` while training, ``finished`` or ``failed`` at the end.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from rlfw.algos import build_agent
from rlfw.buffers import ReplayBuffer
from rlfw.config.validate import validate
from rlfw.envs import FAMILIES, EnvInfo, make_vector_env, read_env_info, resolve_env_id
from rlfw.noise import NOISES

log = logging.getLogger("rlfw")

METRIC_COLUMNS = [
    "epoch", "env_steps", "updates", "episodes", "wall_time_s", "steps_per_s",
    "train_return", "train_success_rate", "eval_return", "eval_return_std",
    "eval_success_rate", "actor_loss", "critic_loss", "q_mean", "noise_sigma",
]  # fmt: skip
EPISODE_COLUMNS = ["episode", "epoch", "env_steps", "env_index", "return", "length", "success"]


def _fmt(x: Any) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    if isinstance(x, float):
        return f"{x:.6g}"
    return str(x)


class CsvLog:
    """Append-only CSV with a fixed header; each row is flushed and fsynced."""

    def __init__(self, path: Path, columns: list[str]) -> None:
        self.path, self.columns = path, columns
        new = not path.exists() or path.stat().st_size == 0
        self._f = path.open("a", newline="")
        self._w = csv.writer(self._f)
        if new:
            self._w.writerow(columns)
            self._f.flush()

    def write(self, rows: Iterable[dict[str, Any]]) -> None:
        for row in rows:
            self._w.writerow([_fmt(row.get(c)) for c in self.columns])
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


def atomic_torch_save(obj: Any, path: Path) -> None:
    """Write ``obj`` to ``path`` so that a reader never sees a half-written file.

    The data goes to ``path.tmp``, is fsynced, then renamed over ``path`` (atomic on POSIX).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def truncate_csv(path: Path, key: str, max_value: int) -> None:
    """Keep only the rows whose integer ``key`` is <= ``max_value`` (atomic rewrite)."""
    if not path.exists():
        return
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    col = rows[0].index(key)
    keep = [rows[0]] + [r for r in rows[1:] if r and int(float(r[col])) <= max_value]
    if len(keep) == len(rows):
        return
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", newline="") as f:
        csv.writer(f).writerows(keep)
    os.replace(tmp, path)


def truncate_logs(run_dir: Path, epoch: int) -> None:
    """Drop the metrics.csv and episodes.csv rows of epochs after ``epoch`` (resume)."""
    for name in ("metrics.csv", "episodes.csv"):
        truncate_csv(run_dir / name, "epoch", epoch)


def split_obs(obs: Any, goal: bool) -> dict[str, np.ndarray]:
    """Vector-env observations -> ``{"observation", ["achieved_goal", "desired_goal"]}`` float32 ``[N, dim]``."""
    if goal:
        return {k: np.asarray(obs[k], np.float32).reshape(len(obs[k]), -1) for k in
                ("observation", "achieved_goal", "desired_goal")}  # fmt: skip
    arr = np.asarray(obs, np.float32)
    return {"observation": arr.reshape(len(arr), -1)}


def final_obs(infos: dict[str, Any], nxt: dict[str, np.ndarray], done: np.ndarray) -> dict[str, np.ndarray]:
    """Final observations of finished envs from a same-step-autoreset ``infos`` (others: ``nxt``)."""
    out = {k: v.copy() for k, v in nxt.items()}
    fo = infos.get("final_obs")
    if fo is None:
        return out
    for e in np.flatnonzero(done):
        for k in out:
            v = fo[k][e] if isinstance(fo, dict) else fo[e]
            if isinstance(v, dict):
                v = v[k]
            out[k][e] = np.asarray(v, np.float32).reshape(-1)
    return out


def success_of(infos: dict[str, Any], done: np.ndarray) -> np.ndarray:
    """``is_success`` of the finished envs' last step (NaN where the env does not report it)."""
    fi = infos.get("final_info", {})
    out = np.full(len(done), np.nan)
    if isinstance(fi, dict):
        if "is_success" in fi:
            mask = fi.get("_is_success", np.ones(len(done), bool))
            out = np.where(mask, np.asarray(fi["is_success"], np.float64), np.nan)
    else:  # an object array of per-env info dicts
        for e in np.flatnonzero(done):
            if isinstance(fi[e], dict) and "is_success" in fi[e]:
                out[e] = float(fi[e]["is_success"])
    return out


class Callback:
    """Hooks into the loop (progress bars, wandb, early stop). Every method is optional."""

    def on_cycle(self, runner: Runner) -> None:
        """After each cycle's collection and updates."""

    def on_epoch(self, runner: Runner, row: dict[str, Any]) -> None:
        """After each epoch's metrics row is written (and the checkpoint, when due)."""

    def on_end(self, runner: Runner) -> None:
        """When :meth:`Runner.run` returns normally or is interrupted."""


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Runner:
    """Builds every component from a composed config and trains.

    Args:
        cfg: the composed root config (see conf/config.yaml).
        run_dir: where to write (Hydra's ``runtime.output_dir``).

    Raises:
        ConfigError: a rule of :func:`rlfw.config.validate.validate` is broken, or the env
            does not fit the config (HER without goals).
    """

    def __init__(
        self,
        cfg: DictConfig,
        run_dir: str | Path,
        callbacks: list[Callback] | None = None,
        dist_ctx: Any = None,
    ) -> None:
        validate(cfg)
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tr = cfg.train
        env_id, message = resolve_env_id(str(cfg.env.id), cfg.env.family)
        if message:
            log.warning(message)
        self.env_id = env_id
        # multi-worker (rlfw.distributed): rank r has its own seed; only rank 0 writes files
        self.dist = dist_ctx
        self.rank = int(dist_ctx.rank) if dist_ctx is not None else 0
        self.world = int(dist_ctx.world) if dist_ctx is not None else 1
        self.is_main = self.rank == 0
        self.seed = int(cfg.seed) + 1000 * self.rank
        # torch threads: the key, else the cores shared out among the workers (at most 2 each:
        # more does not speed up 256-wide MLPs and starves the simulators)
        torch.set_num_threads(tr.torch_threads or max(1, min(2, (os.cpu_count() or 1) // self.world)))
        torch.manual_seed(cfg.seed)  # the same initial networks on every worker
        self.rng = np.random.default_rng(self.seed)
        self.device = pick_device(tr.device)

        family = FAMILIES.get(cfg.env.family).target
        raw_kwargs = OmegaConf.to_container(cfg.env.kwargs, resolve=True)
        kwargs: dict[str, Any] = {str(k): v for k, v in raw_kwargs.items()} if isinstance(raw_kwargs, dict) else {}
        self.ref_env = family.make(env_id, cfg.env.max_episode_steps, kwargs)
        self.info: EnvInfo = read_env_info(cfg.env.family, self.ref_env, env_id)
        if cfg.buffer.relabel == "her" and not self.info.goal:
            from rlfw.errors import ConfigError

            raise ConfigError(f"buffer.relabel=her needs a goal env; env.id '{env_id}' has no goals")
        self.num_envs = int(tr.num_envs)
        self.envs = make_vector_env(
            family, env_id, self.num_envs, cfg.env.max_episode_steps, kwargs, cfg.env.vectorization
        )
        n_eval = int(cfg.eval.num_envs or min(cfg.eval.episodes, 10))
        self.eval_envs = (
            make_vector_env(family, env_id, n_eval, cfg.env.max_episode_steps, kwargs, "sync")
            if cfg.eval.episodes > 0
            else None
        )

        self.noise = NOISES.get(cfg.noise.name).target(cfg.noise, self.num_envs, self.info.act_dim, self.rng)
        self.agent = build_agent(cfg, self.info, self.noise, self.device, seed=cfg.seed)
        self.noise.attach(self.agent)
        # from here on each worker draws its own randomness (NoisyNet, target smoothing)
        torch.manual_seed(self.seed)
        self.agent.generator.manual_seed(self.seed)
        if self.dist is not None:
            self.dist.broadcast_modules(list(self.agent.modules().values()))
            self.agent.grad_sync = self.dist.average_grads
            for norm in (self.agent.obs_norm, self.agent.goal_norm):
                if norm is not None:
                    norm.deferred = True
        self.total_env_steps = tr.epochs * tr.cycles_per_epoch * tr.steps_per_cycle
        self.buffer = ReplayBuffer(
            cfg.buffer, self.info, self.num_envs, float(cfg.algo.gamma), self.total_env_steps, self.seed
        )
        # counters (checkpointed)
        self.epoch = 0
        self.env_steps = 0
        self.episodes = 0
        self.wall_time = 0.0
        self._obs: dict[str, np.ndarray] | None = None
        self._ep_return = np.zeros(self.num_envs)
        self._ep_len = np.zeros(self.num_envs, np.int64)
        self.callbacks: list[Callback] = list(callbacks or [])
        self.last_cycle: dict[str, float] = {}  # mean losses of the last cycle (for loggers)
        self._eval_seeded = False

    # ---------------------------------------------------------------------------------------

    def _policy(self, obs: dict[str, np.ndarray], explore: bool) -> np.ndarray:
        if explore and self.env_steps < self.cfg.train.learning_starts:
            return self.rng.uniform(-1.0, 1.0, (len(obs["observation"]), self.info.act_dim)).astype(np.float32)
        actions = self.agent.act(obs["observation"], obs.get("desired_goal"), explore=explore)
        return self.noise(actions, self.env_steps) if explore else actions

    def _observe(self, obs: dict[str, np.ndarray]) -> None:
        goals = None
        if self.info.goal:
            goals = np.concatenate([obs["desired_goal"], obs["achieved_goal"]])
        self.agent.observe(obs["observation"], goals)

    def collect(self, steps: int) -> list[dict[str, Any]]:
        """Step the vector env ``steps // num_envs`` times; returns the finished episodes."""
        goal = self.info.goal
        if self._obs is None:
            # a resumed run starts new episodes from seeds of its own, not the first epoch's
            raw, _ = self.envs.reset(seed=self.seed + 7919 * self.epoch)
            self._obs = split_obs(raw, goal)
            self.buffer.start(self._obs)
            self._observe(self._obs)
        finished: list[dict[str, Any]] = []
        for _ in range(steps // self.num_envs):
            obs = self._obs
            action = self._policy(obs, explore=True)
            raw, reward, terminated, truncated, infos = self.envs.step(action)
            nxt = split_obs(raw, goal)
            done = np.logical_or(terminated, truncated)
            fin = final_obs(infos, nxt, done) if done.any() else None
            self.buffer.add(action, reward, terminated, truncated, nxt, fin)
            self._observe(nxt)
            self.env_steps += self.num_envs
            self._ep_return += reward
            self._ep_len += 1
            if done.any():
                success = success_of(infos, done)
                for e in np.flatnonzero(done):
                    self.episodes += 1
                    finished.append(
                        {
                            "episode": self.episodes,
                            "epoch": self.epoch + 1,
                            "env_steps": self.env_steps,
                            "env_index": int(e),
                            "return": float(self._ep_return[e]),
                            "length": int(self._ep_len[e]),
                            "success": success[e],
                        }
                    )
                self._ep_return[done] = 0.0
                self._ep_len[done] = 0
                self.noise.reset(done)
            self._obs = nxt
        return finished

    def evaluate(self, episodes: int) -> tuple[float, float, float]:
        """Deterministic-policy episodes: (mean return, std of returns, success rate or NaN)."""
        envs = self.eval_envs
        if envs is None or episodes <= 0:
            return math.nan, math.nan, math.nan
        n = envs.num_envs
        quota = np.array([episodes // n + (e < episodes % n) for e in range(n)])
        got = np.zeros(n, np.int64)
        returns: list[float] = []
        successes: list[float] = []
        ep_ret = np.zeros(n)
        # seeded on the first evaluation of this process (then the envs' generators go on)
        raw, _ = envs.reset(seed=None if self._eval_seeded else self.seed + 1_000_003 + 7919 * self.epoch)
        self._eval_seeded = True
        while (got < quota).any():
            obs = split_obs(raw, self.info.goal)
            action = self._policy(obs, explore=False)
            raw, reward, terminated, truncated, infos = envs.step(action)
            ep_ret += reward
            done = np.logical_or(terminated, truncated)
            if done.any():
                success = success_of(infos, done)
                for e in np.flatnonzero(done):
                    if got[e] < quota[e]:
                        returns.append(float(ep_ret[e]))
                        successes.append(float(success[e]))
                        got[e] += 1
                ep_ret[done] = 0.0
        rets = np.array(returns)
        succ = np.array(successes)
        if self.dist is not None:  # average over every worker's episodes
            ok = np.isfinite(succ)
            t = torch.tensor([rets.sum(), np.square(rets).sum(), len(rets), succ[ok].sum(), ok.sum()], dtype=torch.float64)
            self.dist.all_reduce_sum(t)
            s, s2, n_ep, s_succ, n_succ = t.tolist()
            mean = s / n_ep
            std = math.sqrt(max(s2 / n_ep - mean * mean, 0.0))
            return mean, std, (s_succ / n_succ if n_succ else math.nan)
        rate = float(np.nanmean(succ)) if np.isfinite(succ).any() else math.nan
        return float(rets.mean()), float(rets.std()), rate

    def _sync_normalizers(self) -> None:
        if self.dist is None:
            return
        for norm in (self.agent.obs_norm, self.agent.goal_norm):
            if norm is not None:
                norm.sync(self.dist.all_reduce_sum)

    # ---------------------------------------------------------------------------------------

    def checkpoint(self) -> None:
        """Write ``checkpoints/last.pt`` (and ``buffer.pt`` with ``train.save_buffer``) atomically.

        Every worker saves its own buffer (``buffer.pt``, ``buffer_rank<r>.pt``), before rank 0
        writes ``last.pt``; a buffer is loaded only if it belongs to the same epoch as
        ``last.pt`` (a kill between the two writes leaves a newer buffer, which is ignored).
        """
        if self.cfg.train.save_buffer:
            atomic_torch_save(
                {"epoch": self.epoch, "buffer": self.buffer.state_dict()}, self._buffer_file()
            )
        if not self.is_main:
            return
        state = {
            "agent": self.agent.state_dict(),
            "noise": self.noise.state_dict(),
            "counters": {
                "epoch": self.epoch,
                "env_steps": self.env_steps,
                "episodes": self.episodes,
                "wall_time": self.wall_time,
            },
            "rng": self.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "env_id": self.env_id,
            "config": OmegaConf.to_container(self.cfg, resolve=True),
        }
        atomic_torch_save(state, self.run_dir / "checkpoints" / "last.pt")

    def _buffer_file(self) -> Path:
        name = "buffer.pt" if self.rank == 0 else f"buffer_rank{self.rank}.pt"
        return self.run_dir / "checkpoints" / name

    def load_checkpoint(self, path: str | Path) -> None:
        """Continue from a checkpoint written by :meth:`checkpoint`.

        Restores networks, targets, optimisers, normalisers, noise state, counters and random
        generators; with ``train.save_buffer`` also the replay buffer. Rows of metrics.csv and
        episodes.csv from epochs after the checkpoint (an epoch that was cut short) are
        dropped, so that the resumed run appends without duplicates or gaps. The envs start
        new episodes: the episode that was running when the run stopped is lost.

        Raises:
            FileNotFoundError: if ``path`` does not exist.
        """
        state = torch.load(path, map_location=self.device, weights_only=False)
        self.agent.load_state_dict(state["agent"])
        self.noise.load_state_dict(state["noise"])
        c = state["counters"]
        self.epoch, self.env_steps = int(c["epoch"]), int(c["env_steps"])
        self.episodes, self.wall_time = int(c["episodes"]), float(c["wall_time"])
        self.rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        if self.rank > 0:  # rank 0's saved generators, made distinct again per worker
            self.rng = np.random.default_rng([self.seed, self.epoch])
            self.noise.rng = self.rng
            torch.manual_seed(self.seed * 100_003 + self.epoch)
        buf = self._buffer_file()
        if self.cfg.train.save_buffer and buf.exists():
            saved = torch.load(buf, weights_only=False)
            if int(saved["epoch"]) == self.epoch:
                self.buffer.load_state_dict(saved["buffer"])
            else:
                log.warning("%s is from epoch %s, not %d: starting with an empty buffer", buf, saved["epoch"], self.epoch)
        if self.is_main:
            truncate_logs(self.run_dir, self.epoch)

    def _status(self, status: str, **extra: Any) -> None:
        if not self.is_main:
            return
        data = {"status": status, "epoch": self.epoch, "env_steps": self.env_steps, **extra}
        tmp = self.run_dir / "status.json.tmp"
        tmp.write_text(json.dumps(data) + "\n")
        os.replace(tmp, self.run_dir / "status.json")

    def train_epoch(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """One epoch: cycles of collection and updates, then evaluation.

        Returns:
            (the metrics row, the training episodes finished in it).
        """
        tr, cfg = self.cfg.train, self.cfg
        t0 = time.perf_counter()
        steps0 = self.env_steps
        finished: list[dict[str, Any]] = []
        losses: dict[str, list[float]] = {"actor_loss": [], "critic_loss": [], "q_mean": []}
        for _ in range(tr.cycles_per_epoch):
            starts = {k: len(v) for k, v in losses.items()}
            finished += self.collect(tr.steps_per_cycle)
            self._sync_normalizers()
            if self.env_steps >= tr.learning_starts and len(self.buffer) >= tr.batch_size:
                for _ in range(tr.updates_per_cycle):
                    batch = self.buffer.sample(tr.batch_size, self.env_steps)
                    info = self.agent.update(batch)
                    self.buffer.update_priorities(batch.index, info.td_error)
                    losses["critic_loss"].append(info.critic_loss)
                    losses["q_mean"].append(info.q_mean)
                    if info.actor_loss is not None:
                        losses["actor_loss"].append(info.actor_loss)
            if len(losses["critic_loss"]) > starts["critic_loss"]:
                self.last_cycle = {k: float(np.mean(v[starts[k] :])) for k, v in losses.items() if len(v) > starts[k]}
            for cb in self.callbacks:
                cb.on_cycle(self)
        self.epoch += 1
        eval_ret, eval_std, eval_succ = math.nan, math.nan, math.nan
        if self.epoch % cfg.eval.every == 0 or self.epoch == tr.epochs:
            eval_ret, eval_std, eval_succ = self.evaluate(cfg.eval.episodes)
        dt = time.perf_counter() - t0
        self.wall_time += dt
        rets = [f["return"] for f in finished]
        succ = [f["success"] for f in finished if not math.isnan(f["success"])]
        row = {
            "epoch": self.epoch,
            "env_steps": self.env_steps * self.world,  # over all workers
            "updates": self.agent.updates,
            "episodes": self.episodes,
            "wall_time_s": self.wall_time,
            "steps_per_s": (self.env_steps - steps0) * self.world / dt,
            "train_return": float(np.mean(rets)) if rets else math.nan,
            "train_success_rate": float(np.mean(succ)) if succ else math.nan,
            "eval_return": eval_ret,
            "eval_return_std": eval_std,
            "eval_success_rate": eval_succ,
            **{k: float(np.mean(v)) if v else math.nan for k, v in losses.items()},
            **self.noise.metrics(self.env_steps),
        }
        return row, finished

    def run(self, epochs: int | None = None, close: bool = True) -> dict[str, Any]:
        """Train ``epochs`` more epochs (default: up to ``train.epochs`` in all).

        Each epoch appends to metrics.csv and episodes.csv, writes the checkpoint and logs one
        console line. ``status.json`` says ``finished`` once ``train.epochs`` are done.

        Args:
            epochs: epochs to train now (federated rounds call this repeatedly).
            close: close the envs afterwards.

        Returns:
            The last metrics row.
        """
        tr, cfg = self.cfg.train, self.cfg
        target = tr.epochs if epochs is None else self.epoch + epochs
        main = self.is_main
        metrics = CsvLog(self.run_dir / "metrics.csv", METRIC_COLUMNS) if main else None
        episodes_log = CsvLog(self.run_dir / "episodes.csv", EPISODE_COLUMNS) if main else None
        self._status("running")
        if self.epoch == 0 and main:
            log.info(
                "training %s on %s (%s, %s, %s): %d epochs x %d cycles x %d steps, run dir %s",
                cfg.algo.name, self.env_id, cfg.buffer.name, cfg.noise.name, self.device,
                tr.epochs, tr.cycles_per_epoch, tr.steps_per_cycle, self.run_dir,
            )  # fmt: skip
        row: dict[str, Any] = {}
        try:
            while self.epoch < target:
                row, finished = self.train_epoch()
                if metrics is None or episodes_log is None:
                    continue  # a worker other than rank 0 writes nothing
                episodes_log.write(finished)
                metrics.write([row])
                if self.epoch % tr.checkpoint_every == 0 or self.epoch == tr.epochs:
                    self.checkpoint()
                self._status("running")
                for cb in self.callbacks:
                    cb.on_epoch(self, row)
                if cfg.logger.console:
                    log.info(
                        "epoch %d/%d | env_steps %d | %.1f s | %.0f steps/s | train_success %s | "
                        "eval_success %s | eval_return %s | critic_loss %s | q_mean %s",
                        self.epoch, tr.epochs, row["env_steps"], self.wall_time, row["steps_per_s"],
                        _fmt(row["train_success_rate"]) or "-", _fmt(row["eval_success_rate"]) or "-",
                        _fmt(row["eval_return"]) or "-", _fmt(row["critic_loss"]) or "-", _fmt(row["q_mean"]) or "-",
                    )  # fmt: skip
        except BaseException as err:
            state = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
            self._status(state, error=f"{type(err).__name__}: {err}", resume=f"python -m rlfw resume={self.run_dir}")
            self._end()
            if close:
                self.close()
            raise
        finally:
            for f in (metrics, episodes_log):
                if f is not None:
                    f.close()
        if self.epoch >= tr.epochs:
            self._status("finished")
        self._end()
        if close:
            self.close()
        return row

    def _end(self) -> None:
        for cb in self.callbacks:
            try:
                cb.on_end(self)
            except Exception as err:  # a logger must not turn a finished run into a failure
                log.warning("callback %s failed at the end: %s", type(cb).__name__, err)

    def close(self) -> None:
        """Close the envs."""
        for env in (self.envs, self.eval_envs, self.ref_env):
            if isinstance(env, gym.Env | gym.vector.VectorEnv):
                env.close()
