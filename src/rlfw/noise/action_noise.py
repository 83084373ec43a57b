"""Action-space exploration: none, Gaussian (with decay) and Ornstein-Uhlenbeck noise.

Contract (:class:`rlfw.core.Exploration`, SB3 ``common/noise.py``):
``noise(actions [N, A], env_step) -> actions [N, A]`` and ``noise.reset(done_mask [N])`` per
parallel env. Actions live in [-1, 1]. Every noise combines with the HER paper's
``random_eps``: with that probability an env's action is replaced by a uniformly random one.
Parameter-space exploration (NoisyNet) lives apart, in :mod:`rlfw.noise.noisynet`.

This module registers ``noise=none``, ``noise=gaussian`` and ``noise=ou``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rlfw.noise.config import GaussianNoiseConfig, NoNoiseConfig, OUNoiseConfig
from rlfw.registry import register


def random_actions(actions: np.ndarray, random_eps: float, rng: np.random.Generator) -> np.ndarray:
    """With probability ``random_eps`` per row, replace ``actions [N, A]`` by U(-1, 1) (in place;
    HER paper, Appendix A). Returns ``actions``."""
    if random_eps > 0.0:
        rand = rng.random(len(actions)) < random_eps
        if rand.any():
            actions[rand] = rng.uniform(-1.0, 1.0, (int(rand.sum()), actions.shape[1]))
    return actions


class ActionNoise:
    """Base class: clipping and ``random_eps``; subclasses implement :meth:`perturb` and declare
    the keys of :meth:`metrics` in :attr:`metric_names`.

    Args:
        cfg: the noise config (``random_eps`` and the subclass's keys).
        num_envs: N parallel envs (one noise state each where the noise has state).
        act_dim: A.
        rng: the generator all draws come from.
    """

    metric_names: tuple[str, ...] = ()
    parameter_noise = False  # action noise: the policy's weights are left alone

    def __init__(self, cfg: Any, num_envs: int, act_dim: int, rng: np.random.Generator) -> None:
        self.cfg = cfg
        self.num_envs, self.act_dim, self.rng = num_envs, act_dim, rng
        self.random_eps = float(cfg.random_eps)

    def perturb(self, actions: np.ndarray, env_step: int) -> np.ndarray:
        """Add the noise to ``actions [N, A]`` (no clipping here)."""
        return actions

    def __call__(self, actions: np.ndarray, env_step: int) -> np.ndarray:
        """Exploratory actions ``[N, A]`` in [-1, 1] from the actor's ``actions [N, A]``."""
        out = np.clip(self.perturb(actions, env_step), -1.0, 1.0)
        return random_actions(out, self.random_eps, self.rng).astype(np.float32)

    def reset(self, done: np.ndarray) -> None:
        """Reset the state of the envs whose episode ended (``done [N]`` bool)."""

    def metrics(self, env_step: int) -> dict[str, float]:
        """Values to log: ``noise_sigma``, the current exploration scale (a metrics.csv column)."""
        return {}

    def attach(self, agent: Any) -> None:
        """Called once by :func:`rlfw.build.build_agent` with the built agent; action noise
        needs nothing of it."""

    def resample(self) -> None:
        """Nothing to redraw: action noise has no weight sample (see ``parameter_noise``)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class NoNoise(ActionNoise):
    """``noise=none``: the agent's actions unchanged (stochastic policies explore by sampling);
    ``random_eps`` still applies."""


class GaussianNoise(ActionNoise):
    """``a + N(0, sigma_t^2)``, with ``sigma_t`` decayed from ``sigma`` to ``sigma_final``.

    Schedules over ``decay_steps`` env steps (constant afterwards):
    linear ``sigma + (sigma_final - sigma) * f``, exponential
    ``sigma * (sigma_final / sigma) ** f`` with ``f = min(env_step / decay_steps, 1)``.
    """

    metric_names = ("noise_sigma",)

    def __init__(self, cfg: Any, num_envs: int, act_dim: int, rng: np.random.Generator) -> None:
        super().__init__(cfg, num_envs, act_dim, rng)
        # read once: an OmegaConf access (noise.sigma interpolates env.noise_sigma) costs about
        # as much as the policy's forward pass, and sigma is needed at every env step
        self.sigma0 = float(cfg.sigma)
        self.sigma_final = None if cfg.sigma_final is None else float(cfg.sigma_final)
        self.decay_steps = int(cfg.decay_steps)
        self.schedule = str(cfg.schedule)

    def sigma(self, env_step: int) -> float:
        """The std at ``env_step``."""
        s0, s1 = self.sigma0, self.sigma_final
        if s1 is None or self.decay_steps <= 0:
            return s0
        f = min(max(env_step, 0) / float(self.decay_steps), 1.0)
        if self.schedule == "exponential":
            return s0 * (s1 / s0) ** f
        return s0 + (s1 - s0) * f

    def perturb(self, actions: np.ndarray, env_step: int) -> np.ndarray:
        return actions + self.rng.normal(0.0, self.sigma(env_step), actions.shape)

    def metrics(self, env_step: int) -> dict[str, float]:
        return {"noise_sigma": self.sigma(env_step)}


class OUNoise(ActionNoise):
    """Ornstein-Uhlenbeck noise, one process per parallel env (Lillicrap et al. 2016, Sec. 7).

    ``x <- x + theta (mu - x) dt + sigma sqrt(dt) N(0, 1)``; stationary variance
    ``sigma^2 / (2 theta)``. An env's process restarts at ``mu`` when its episode ends.
    """

    metric_names = ("noise_sigma",)

    def __init__(self, cfg: Any, num_envs: int, act_dim: int, rng: np.random.Generator) -> None:
        super().__init__(cfg, num_envs, act_dim, rng)
        self.theta, self.sigma = float(cfg.theta), float(cfg.sigma)
        self.dt, self.mu = float(cfg.dt), float(cfg.mu)
        self.x = np.full((num_envs, act_dim), self.mu)

    def sample(self) -> np.ndarray:
        """Advance every env's process one step; returns ``x [N, A]``."""
        self.x = (
            self.x
            + self.theta * (self.mu - self.x) * self.dt
            + self.sigma * np.sqrt(self.dt) * self.rng.standard_normal(self.x.shape)
        )
        return self.x

    def perturb(self, actions: np.ndarray, env_step: int) -> np.ndarray:
        return actions + self.sample()

    def reset(self, done: np.ndarray) -> None:
        self.x[np.asarray(done, bool)] = self.mu

    def metrics(self, env_step: int) -> dict[str, float]:
        return {"noise_sigma": self.sigma}

    def state_dict(self) -> dict[str, Any]:
        return {"x": self.x.copy()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.x = np.asarray(state["x"], np.float64)


register("noise", "none", NoNoiseConfig, NoNoise)
register("noise", "gaussian", GaussianNoiseConfig, GaussianNoise)
register("noise", "ou", OUNoiseConfig, OUNoise)
