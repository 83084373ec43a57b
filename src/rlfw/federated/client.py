"""The Flower client: one :class:`rlfw.training.loop.TrainLoop` on one task, trained a few epochs a round.

Files in the client's directory ``<run_dir>/clients/<index>_<env>/``: everything a TrainLoop
writes (``metrics.csv`` one row per epoch over all rounds, ``episodes.csv``,
``checkpoints/last.pt``, ``status.json``) plus ``federated/last.pt`` (and, with
``federated.keep_client_rounds``, ``federated/round_<k>.pt``): the weights it sent to the server
that round, by name (:func:`rlfw.federated.params.layout`), with ``num_examples`` and its
metrics. ``federated_rounds.csv`` has one row per round with the local and global results.

The TrainLoop (envs, replay buffer, optimisers, counters) lives as long as the client's process:
in deployment mode that is the client process; in simulation mode it is the Ray actor that
runs the clients (one actor, see :mod:`rlfw.federated.app`), where :func:`get_client` keeps it
in a per-process cache between rounds.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
from flwr.client import NumPyClient
from omegaconf import DictConfig

from rlfw.errors import ConfigError
from rlfw.federated import params
from rlfw.federated.setup import Dims, client_name, dims_of, shape_mismatch

log = logging.getLogger("rlfw")

ROUND_COLUMNS = [
    "round", "epoch", "env_steps", "num_examples", "eval_success_rate", "eval_return",
    "train_success_rate", "train_return", "global_eval_success_rate", "global_eval_return",
]  # fmt: skip


def _num(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


class RLClient(NumPyClient):
    """Flower NumPyClient around a TrainLoop.

    Args:
        cfg: the client's composed training config (see :func:`rlfw.federated.setup.plan`).
        index: the client's index in ``federated.clients``.
        env: its entry there (an env option such as ``FetchPush-v4``).
        run_dir: the federation's run directory; the client writes under ``clients/``.
        epochs_per_round: default epochs per round (the server's fit config may say otherwise).
        keep_rounds: also keep ``federated/round_<k>.pt`` every round.
    """

    def __init__(
        self,
        cfg: DictConfig,
        index: int,
        env: str,
        run_dir: str | Path,
        epochs_per_round: int = 1,
        keep_rounds: bool = False,
    ) -> None:
        self.cfg, self.index, self.env = cfg, int(index), str(env)
        self.dir = Path(run_dir) / "clients" / client_name(self.index, self.env)
        self.epochs_per_round = int(epochs_per_round)
        self.keep_rounds = bool(keep_rounds)
        self._loop: Any = None
        self._rounds: Any = None
        self._pending: dict[str, Any] = {}

    # -------------------------------------------------------------------------------------

    @property
    def loop(self) -> Any:
        """The TrainLoop, built on first use (envs, buffer, agent) through the run lifecycle
        (:func:`rlfw.lifecycle.open_run`): the client's directory is this process's alone, the
        loop has the built-in callbacks (loggers, plots, early stop) and ends with the
        evaluation of what the client delivers (``evaluation.json``) in the last round."""
        if self._loop is None:
            from rlfw.lifecycle import open_run

            self._loop = open_run(self.cfg, self.dir)
        return self._loop

    def _check(self, config: dict[str, Any]) -> None:
        """Refuse weights for a model of other sizes (before loading them)."""
        info = self.loop.info
        mine = dims_of(info)
        if "obs_dim" in config:
            theirs = Dims(int(config["obs_dim"]), int(config["goal_dim"]), int(config["act_dim"]))
            if mine != theirs:
                raise ConfigError(
                    shape_mismatch(
                        self.index, self.env, mine, str(config.get("model_env", "?")), theirs
                    )
                )
        fp = config.get("layout")
        if fp is not None and fp != params.fingerprint(params.layout(self.loop.agent)):
            raise ConfigError(
                f"federated.clients[{self.index}] '{self.env}': its networks' layers differ from the "
                f"global model's (same algo.*_hidden, algo.n_critics and noise on server and clients?)"
            )

    def get_parameters(self, config: dict[str, Any]) -> list[np.ndarray]:
        return params.get_weights(self.loop.agent)

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Any]
    ) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        """Load the global weights, train ``epochs`` epochs, return weights, env steps, metrics.

        Returns:
            (weights in :func:`params.layout` order, env steps collected this round (FedAvg's
            n_k), metrics: client_index, env, eval_success_rate, eval_return, train_*, epoch,
            env_steps).
        """
        self._check(config)
        r = self.loop
        params.set_weights(r.agent, parameters)
        epochs = int(config.get("epochs", self.epochs_per_round))
        rnd = int(config.get("round", r.epoch // max(epochs, 1) + 1))
        steps0 = r.env_steps
        row = r.run(epochs=epochs, close=False)
        n = int(r.env_steps - steps0)
        weights = params.get_weights(r.agent)
        metrics: dict[str, Any] = {
            "client_index": self.index,
            "env": self.env,
            "epoch": int(r.epoch),
            "env_steps": int(r.env_steps),
            **{
                k: _num(row.get(k))
                for k in ("eval_success_rate", "eval_return", "train_success_rate", "train_return")
            },
        }
        self._save(rnd, weights, n, metrics)
        self._pending = {"round": rnd, "num_examples": n, **metrics}
        if "evaluate" in config and not bool(config["evaluate"]):
            self._write_round()
        return weights, n, metrics

    def evaluate(
        self, parameters: list[np.ndarray], config: dict[str, Any]
    ) -> tuple[float, int, dict[str, Any]]:
        """Evaluate the global weights on this client's task (``eval.episodes`` episodes).

        Returns:
            (minus the mean return, as Flower's "loss"; episodes; metrics: client_index, env,
            eval_success_rate, eval_return). The next :meth:`fit` loads the global weights
            again, so loading them here changes nothing.
        """
        self._check(config)
        r = self.loop
        params.set_weights(r.agent, parameters)
        episodes = int(r.cfg.eval.episodes)
        ret, _std, succ = r.evaluate(episodes)
        metrics = {
            "client_index": self.index,
            "env": self.env,
            "eval_success_rate": _num(succ),
            "eval_return": _num(ret),
        }
        self._pending.update(global_eval_success_rate=_num(succ), global_eval_return=_num(ret))
        self._write_round()
        return -_num(ret), max(episodes, 1), metrics

    # -------------------------------------------------------------------------------------

    def _save(self, rnd: int, weights: list[np.ndarray], n: int, metrics: dict[str, Any]) -> None:
        from rlfw.training.checkpoint import atomic_torch_save

        entries = params.layout(self.loop.agent)
        state = {
            "round": rnd,
            "num_examples": n,
            "client_index": self.index,
            "env": self.env,
            "weights": {e.name: w for e, w in zip(entries, weights)},
            "metrics": metrics,
        }
        if self.keep_rounds:
            atomic_torch_save(state, self.dir / "federated" / f"round_{rnd}.pt")
        atomic_torch_save(state, self.dir / "federated" / "last.pt")

    def _write_round(self) -> None:
        from rlfw.training.csvfiles import CsvLog

        if not self._pending:
            return
        if self._rounds is None:
            self._rounds = CsvLog(self.dir / "federated_rounds.csv", ROUND_COLUMNS)
        self._rounds.write([self._pending])
        self._pending = {}

    def close(self) -> None:
        """Flush the round row, close the CSV and the envs."""
        self._write_round()
        if self._rounds is not None:
            self._rounds.close()
        if self._loop is not None:
            from rlfw.lifecycle import close_run

            close_run(self._loop)
            self._loop = None


# Simulation: one client object per (run_dir, index) in each worker process, kept between rounds.
_CLIENTS: dict[tuple[str, int], RLClient] = {}


class ClientFactory:
    """A picklable ``client_fn(context)`` for Flower's ClientApp in the simulation engine.

    The simulation numbers its virtual nodes with ``node_config["partition-id"]`` 0..N-1; node
    ``i`` is client ``i``.
    """

    def __init__(
        self,
        cfgs: list[DictConfig],
        envs: list[str],
        run_dir: str,
        epochs_per_round: int,
        keep_rounds: bool,
    ) -> None:
        self.cfgs, self.envs, self.run_dir = cfgs, list(envs), str(run_dir)
        self.epochs_per_round, self.keep_rounds = int(epochs_per_round), bool(keep_rounds)

    def get(self, index: int) -> RLClient:
        key = (self.run_dir, index)
        if key not in _CLIENTS:
            _CLIENTS[key] = RLClient(
                self.cfgs[index],
                index,
                self.envs[index],
                self.run_dir,
                self.epochs_per_round,
                self.keep_rounds,
            )
        return _CLIENTS[key]

    def __call__(self, context: Any) -> Any:
        index = int(context.node_config["partition-id"])
        return self.get(index).to_client()


def close_clients(run_dir: str | None = None) -> None:
    """Close and forget the cached simulation clients (of one run dir, or all)."""
    for key in list(_CLIENTS):
        if run_dir is None or key[0] == str(run_dir):
            _CLIENTS.pop(key).close()
