"""Episode storage: one ring of rows per parallel env, each observation stored once.

Row ``(r, e)`` holds observation ``o_t`` of env ``e`` (with ``achieved_goal_t`` and
``desired_goal_t`` for goal envs) and, once the step is taken, ``a_t``, ``r_t`` and
``terminated_t``. The next observation of a transition is the next row of the same env, so no
observation is stored twice. An episode of ``T`` steps occupies ``T + 1`` rows: the last one
(the *terminal row*) holds the final observation ``o_T`` and no action. Rows are addressed by
an absolute per-env counter (``abs``); the physical row is ``abs % rows``.

Flat indices ``row * num_envs + env`` name transitions for samplers and priorities.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

# the [R, N, ...] arrays of the ring (EpisodeStorage), saved up to the rows written
RING_ARRAYS = ("obs", "achieved_goal", "desired_goal", "action", "reward", "terminated", "is_transition", "ep_t",
               "ep_len")  # fmt: skip


class EpisodeStorage:
    """Ring storage of episodes for ``num_envs`` parallel envs.

    Args:
        capacity: transitions kept over all envs; each env gets ``ceil(capacity / num_envs)``
            rows.
        num_envs: parallel envs writing at every step.
        obs_dim: flat observation size.
        act_dim: flat action size.
        goal_dim: goal size (0: no goals are stored).

    Arrays (``R`` rows, ``N`` envs): ``obs [R, N, obs_dim]``, ``achieved_goal`` and
    ``desired_goal [R, N, goal_dim]``, ``action [R, N, act_dim]`` (all float32), ``reward [R, N]``
    float32, ``terminated [R, N]`` bool, ``is_transition [R, N]`` bool (the row's action is taken
    and its next observation stored), ``ep_t [R, N]`` int32 (step within the episode) and
    ``ep_len [R, N]`` int32 (the episode's number of steps, -1 while it runs).
    """

    def __init__(
        self, capacity: int, num_envs: int, obs_dim: int, act_dim: int, goal_dim: int = 0
    ) -> None:
        if capacity < 2 * num_envs:
            raise ValueError(f"buffer.capacity={capacity} must be at least 2 x num_envs={num_envs}")
        self.rows = R = math.ceil(capacity / num_envs)
        self.num_envs = N = num_envs
        self.obs_dim, self.act_dim, self.goal_dim = obs_dim, act_dim, goal_dim
        self.obs = np.zeros((R, N, obs_dim), np.float32)
        self.achieved_goal = np.zeros((R, N, goal_dim), np.float32)
        self.desired_goal = np.zeros((R, N, goal_dim), np.float32)
        self.action = np.zeros((R, N, act_dim), np.float32)
        self.reward = np.zeros((R, N), np.float32)
        self.terminated = np.zeros((R, N), bool)
        self.is_transition = np.zeros((R, N), bool)
        self.ep_t = np.zeros((R, N), np.int32)
        self.ep_len = np.full((R, N), -1, np.int32)
        # absolute index of the row that holds each env's current observation; -1: not started
        self.head = np.full(N, -1, np.int64)
        self.env_ids = np.arange(N)
        self.n_transitions = 0

    # ---------------------------------------------------------------------------------------
    # writing

    @property
    def nbytes(self) -> int:
        """Bytes held by the storage arrays."""
        arrays = (
            self.obs, self.achieved_goal, self.desired_goal, self.action, self.reward,
            self.terminated, self.is_transition, self.ep_t, self.ep_len,
        )  # fmt: skip
        return int(sum(a.nbytes for a in arrays))

    def _claim(self, abs_idx: np.ndarray, envs: np.ndarray) -> np.ndarray:
        """Prepare rows for new observations; returns the flat indices of lost transitions."""
        rows = abs_idx % self.rows
        lost = self.is_transition[rows, envs]
        self.n_transitions -= int(lost.sum())
        self.is_transition[rows, envs] = False
        self.ep_len[rows, envs] = -1
        return (rows * self.num_envs + envs)[lost]

    def _write_obs(
        self, abs_idx: np.ndarray, envs: np.ndarray, obs: dict[str, np.ndarray], ep_t: np.ndarray
    ) -> None:
        rows = abs_idx % self.rows
        self.obs[rows, envs] = obs["observation"]
        if self.goal_dim:
            self.achieved_goal[rows, envs] = obs["achieved_goal"]
            self.desired_goal[rows, envs] = obs["desired_goal"]
        self.ep_t[rows, envs] = ep_t

    def start(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """Store the first observations after ``reset`` (``obs[k]`` is ``[N, dim]``).

        Episodes left running in the storage (a restored buffer) are closed at their last
        stored observation first.

        Returns:
            Flat indices of transitions overwritten (for the sampler), int64 ``[k]``.
        """
        envs = self.env_ids
        # an episode still running here (a resumed run's buffer) ends at its current row: it is
        # treated as truncated there, so n-step and HER never reach into the new episode
        for e in np.flatnonzero(self.head >= 0):
            h = int(self.head[e])
            r = h % self.rows
            if self.ep_len[r, e] < 0:
                T = int(self.ep_t[r, e])
                first = max(h - T, h - self.rows + 1)
                self.ep_len[np.arange(first, h + 1) % self.rows, e] = T
        nxt = self.head + 1
        lost = self._claim(nxt, envs)
        self._write_obs(nxt, envs, obs, np.zeros(self.num_envs, np.int32))
        self.head = nxt
        return lost

    def add(
        self,
        action: np.ndarray,
        reward: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        next_obs: dict[str, np.ndarray],
        final_obs: dict[str, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Store one vector step.

        Args:
            action: ``[N, act_dim]`` in [-1, 1].
            reward: ``[N]``.
            terminated: as ``reward``.
            truncated: as ``reward``.
            next_obs: the observations the vector env returned, ``[N, dim]`` per key; for a
                finished env this is already the next episode's first observation
                (same-step autoreset).
            final_obs: the final observations ``[N, dim]`` per key (rows of envs that did not
                finish are ignored); required if any env finished.

        Returns:
            (flat indices of the N new transitions, flat indices of transitions overwritten).
        """
        if (self.head < 0).any():
            raise RuntimeError("EpisodeStorage.add called before start()")
        envs = self.env_ids
        rows = self.head % self.rows
        self.action[rows, envs] = action
        self.reward[rows, envs] = reward
        self.terminated[rows, envs] = terminated
        done = np.logical_or(terminated, truncated)
        ep_t_next = self.ep_t[rows, envs] + 1

        nxt = self.head + 1
        lost = [self._claim(nxt, envs)]
        if done.any():
            if final_obs is None:
                raise ValueError("final_obs is required when an episode ends")
            merged = {k: np.where(_col(done, v), final_obs[k], v) for k, v in next_obs.items()}
        else:
            merged = next_obs
        self._write_obs(nxt, envs, merged, ep_t_next)
        self.is_transition[rows, envs] = True
        self.n_transitions += self.num_envs
        new = rows * self.num_envs + envs
        self.head = nxt

        for e in np.flatnonzero(done):
            T = int(ep_t_next[e])
            end = int(self.head[e])
            first = max(end - T, end - self.rows + 1)
            self.ep_len[np.arange(first, end + 1) % self.rows, e] = T
            # the next episode's first observation goes into a row of its own
            nxt_e = np.array([end + 1])
            env_e = np.array([e])
            lost.append(self._claim(nxt_e, env_e))
            self._write_obs(nxt_e, env_e, {k: v[e : e + 1] for k, v in next_obs.items()}, np.zeros(1, np.int32))
            self.head[e] = end + 1
        return new, np.concatenate(lost)

    # ---------------------------------------------------------------------------------------
    # reading

    def split(self, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Flat indices -> (row, env)."""
        return flat // self.num_envs, flat % self.num_envs

    def to_abs(self, rows: np.ndarray, envs: np.ndarray) -> np.ndarray:
        """Physical rows of ``envs`` -> absolute per-env indices (rows must be written)."""
        head = self.head[envs]
        return head - ((head - rows) % self.rows)

    def episode_bounds(self, abs_idx: np.ndarray, envs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Absolute (first row still stored, last row) of each sample's episode.

        The last row is the terminal row of a finished episode, or the env's current row for
        the episode still running. The first row is the episode's first observation unless the
        ring has overwritten it, then the oldest row still stored.
        """
        rows = abs_idx % self.rows
        ep_t = self.ep_t[rows, envs].astype(np.int64)
        ep_len = self.ep_len[rows, envs].astype(np.int64)
        start = np.maximum(abs_idx - ep_t, self.head[envs] - self.rows + 1)
        end = np.where(ep_len >= 0, abs_idx - ep_t + ep_len, self.head[envs])
        return start, end

    def filled_rows(self) -> int:
        """Rows written in the fullest env's ring (samplers draw from ``[0, filled * N)``)."""
        return int(min(self.head.max() + 1, self.rows))

    def state_dict(self) -> dict[str, Any]:
        """Arrays and counters, for checkpoints that keep the buffer: of the ``[R, ...]``
        arrays only the rows written so far (``saved_rows``; all ``R`` once the ring wrapped),
        so a buffer of capacity 2e6 holding 400 transitions saves kilobytes, not its capacity."""
        written = int(self.head.max()) + 1 if self.head.size and int(self.head.max()) >= 0 else 0
        used = min(written, self.rows)
        out: dict[str, Any] = {}
        for k, v in vars(self).items():
            if k in RING_ARRAYS:
                out[k] = v[:used]
            elif isinstance(v, np.ndarray | int):
                out[k] = v
        out["saved_rows"] = used
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (shapes must match; a state with ``saved_rows`` fills the
        first rows of fresh arrays).

        Raises:
            ValueError: an array whose shape does not fit this storage.
        """
        used = state.get("saved_rows")
        for k, v in state.items():
            if k == "saved_rows":
                continue
            cur = getattr(self, k)
            if used is not None and k in RING_ARRAYS:
                arr = np.asarray(v)
                if arr.shape != (int(used), *cur.shape[1:]) or int(used) > self.rows:
                    raise ValueError(f"buffer state '{k}' has shape {arr.shape}, expected ({used}, {cur.shape[1:]})")
                fresh = np.full_like(cur, -1) if k == "ep_len" else np.zeros_like(cur)
                fresh[: int(used)] = arr
                setattr(self, k, fresh)
                continue
            if isinstance(cur, np.ndarray) and cur.shape != np.shape(v):
                raise ValueError(f"buffer state '{k}' has shape {np.shape(v)}, expected {cur.shape}")
            setattr(self, k, v)


def _col(mask: np.ndarray, like: np.ndarray) -> np.ndarray:
    """Broadcast an ``[N]`` mask against ``[N, ...]``."""
    return mask.reshape((-1,) + (1,) * (like.ndim - 1))
