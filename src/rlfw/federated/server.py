"""The server side: a Flower strategy that aggregates rlfw agents and writes the federation's files.

Files in the run directory:

- ``global/round_<k>.pt`` and ``global/last.pt``: the global model after round ``k``
  (``round_0.pt`` is the initial one): ``{"round", "agent": {module: state_dict} for actor,
  critic, actor_target, critic_target, obs_norm, goal_norm, "dims", "strategy", "clients":
  [per-client results], "config"}``. ``agent[m]`` loads with ``agent.modules()[m]
  .load_state_dict``; optimiser states are not federated and not saved here.
- ``federated_metrics.csv``: one row per round (:func:`metric_columns`): the number of clients
  aggregated and refused, their env steps, ``eval_success_rate`` / ``eval_return`` (the clients'
  local models after the round's training, weighted by their env steps, as the seed project
  reported) and ``global_eval_success_rate`` / ``global_eval_return`` (the new global model
  evaluated on every client's task, weighted by episodes; with ``federated.evaluate_global``),
  then the same per client, prefixed ``<index>_<env>/``.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from flwr.common import (
    EvaluateRes,
    FitRes,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg
from omegaconf import DictConfig, OmegaConf

from rlfw.federated import params
from rlfw.federated.setup import Dims, client_name

log = logging.getLogger("rlfw")

_PER_CLIENT = (
    "env_steps",
    "eval_success_rate",
    "eval_return",
    "global_eval_success_rate",
    "global_eval_return",
)


# the metrics an rlfw client sends (rlfw.federated.client: fit's and evaluate's)
CLIENT_METRICS = frozenset({"client_index", "env", "epoch", "env_steps", "eval_success_rate", "eval_return",
                            "train_success_rate", "train_return"})  # fmt: skip
# network state entries that cannot be negative: a batch (re)normalisation's running variance and
# step counter (the normalisers' statistics have check_normalizers)
NON_NEGATIVE = (".running_var", ".steps")


def metric_columns(names: list[str]) -> list[str]:
    """Columns of federated_metrics.csv for clients named ``<index>_<env>``."""
    return [
        "round", "clients", "refused", "env_steps", "eval_success_rate", "eval_return",
        "global_eval_success_rate", "global_eval_return", "wall_time_s",
        *[f"{n}/{k}" for n in names for k in _PER_CLIENT],
    ]  # fmt: skip


class RLStrategy(FedAvg):
    """FedAvg (or FedAvgM) over rlfw agents, with checkpoints and a metrics row every round.

    Network weights: FedAvg's weighted mean (weights: env steps collected that round, or 1 with
    ``federated.weighting=uniform``); ``fedavgm`` adds server momentum on top (Hsu et al.
    2019): ``m <- beta m + (g - mean)``, ``g <- g - lr m``. Normaliser statistics: summed deltas
    (see :mod:`rlfw.federated.params`). ``fedmedian``, ``fedtrimmedavg`` and ``krum`` aggregate
    the network weights with Flower's robust rules instead of the mean.

    Every client update is checked first (:meth:`check_update`): the global model's layout
    (shapes and dtypes), finite values, the L2 norm of its change to the global networks
    (``federated.max_update_norm``, absolute, and ``federated.max_update_ratio`` times the
    global networks' norm, 10 by default), the normaliser statistics it adds (count, sum and
    sum of squares deltas: see :meth:`check_normalizers`), its ``num_examples`` (FedAvg's weight:
    an integer in [0, ``max_steps``], the env steps a round allows) and its metrics
    (``client_index`` one of the clients, ``eval_success_rate`` in [0, 1], no infinite
    return). A failing one is refused (a log line names the client and the reason; counted in
    ``refused``) and left out; the honest clients' aggregate goes on.

    Args:
        cfg: the composed federated config (``federated`` block and the shared training keys).
        agent: the global model (an agent built for ``dims``); updated in place.
        dims: the global model's sizes, sent to the clients with every instruction.
        run_dir: where the files above go.
        max_steps: the most env steps any client collects in a round (default: from ``cfg.train``:
            ``epochs_per_round * cycles_per_epoch * steps_per_cycle * workers``).
        max_envs: the most parallel training envs of any client (default ``cfg.train.num_envs``);
            a client's first round also adds its envs' first observations to its normalisers.
    """

    def __init__(self, cfg: DictConfig, agent: Any, dims: Dims, run_dir: str | Path,
                 max_steps: int | None = None, max_envs: int | None = None) -> None:  # fmt: skip
        fed = cfg.federated
        n = len(fed.clients)
        self.cfg, self.fed, self.agent, self.dims = cfg, fed, agent, dims
        self.max_steps = int(max_steps) if max_steps is not None else round_steps(fed.epochs_per_round, cfg.train)
        self.max_envs = int(max_envs) if max_envs is not None else int(cfg.train.num_envs)
        self.run_dir = Path(run_dir)
        self.entries = params.layout(agent)
        self.kinds = [e.kind for e in self.entries]
        self.names = [client_name(i, e) for i, e in enumerate(fed.clients)]
        self.global_arrays = params.get_weights(agent)
        self.momentum: list[np.ndarray] | None = None
        self.t0 = time.perf_counter()
        self._row: dict[str, Any] = {}
        self._results: list[dict[str, Any]] = []
        self._csv: Any = None
        evaluate = bool(fed.evaluate_global)
        super().__init__(
            fraction_fit=1.0,
            fraction_evaluate=1.0 if evaluate else 0.0,
            min_fit_clients=n,
            min_evaluate_clients=n if evaluate else 0,
            min_available_clients=n,
            accept_failures=True,
            initial_parameters=ndarrays_to_parameters(self.global_arrays),
            on_fit_config_fn=self._fit_config,
            on_evaluate_config_fn=self._instructions,
        )
        self._save(0, [])

    # -------------------------------------------------------------------------------------

    def _instructions(self, server_round: int) -> dict[str, Scalar]:
        return {
            "round": server_round,
            "obs_dim": self.dims.obs,
            "goal_dim": self.dims.goal,
            "act_dim": self.dims.act,
            "model_env": str(self.fed.clients[0]),
            "layout": params.fingerprint(self.entries),
        }

    def _fit_config(self, server_round: int) -> dict[str, Scalar]:
        return {
            **self._instructions(server_round),
            "epochs": int(self.fed.epochs_per_round),
            "evaluate": bool(self.fed.evaluate_global),
        }

    def check_update(self, arrays: list[np.ndarray], num_examples: Any = None,
                     metrics: dict[str, Any] | None = None) -> str | None:  # fmt: skip
        """Why a client's result may not enter the aggregate, or None if it may.

        Args:
            arrays: the client's weights in :func:`params.layout` order.
            num_examples: its reported env steps this round (FedAvg's weight); None: not checked.
            metrics: its reported metrics; None: not checked.
        """
        if num_examples is not None:
            reason = self.check_num_examples(num_examples)
            if reason is not None:
                return reason
        if metrics is not None:
            reason = self.check_metrics(metrics)
            if reason is not None:
                return reason
        reason = self._check_arrays(arrays)
        if reason is not None:
            return reason
        return self.check_normalizers(arrays, num_examples)

    def check_num_examples(self, n: Any) -> str | None:
        """``num_examples`` must be an integer in [0, ``max_steps``] (FedAvg weights by it: a
        negative one reverses the step, a huge one replaces the global model)."""
        if isinstance(n, bool) or not isinstance(n, int | np.integer):
            return f"its num_examples {n!r} is not an integer"
        if not 0 <= int(n) <= self.max_steps:
            return (f"its num_examples {int(n)} is outside [0, {self.max_steps}] (the env steps "
                    f"a client collects in a round)")  # fmt: skip
        return None

    def check_metrics(self, m: dict[str, Any]) -> str | None:
        """The metrics that name the client and fill federated_metrics.csv and the round
        checkpoints: only the keys a client sends (:data:`CLIENT_METRICS`), ``client_index`` one
        of the clients, ``env`` that client's own env id, rates in [0, 1], counters non-negative
        integers, returns finite."""
        unknown = sorted(str(k)[:40] for k in m if k not in CLIENT_METRICS)
        if unknown:
            return f"it sent metrics rlfw's clients do not send: {', '.join(unknown[:5])}"
        i = m.get("client_index")
        if isinstance(i, bool) or not isinstance(i, int | np.integer) or not 0 <= int(i) < len(self.names):
            return f"its client_index {i!r} is not one of 0..{len(self.names) - 1}"
        env = m.get("env")
        if not isinstance(env, str) or client_name(int(i), env) != self.names[int(i)]:
            return f"its env {str(env)[:60]!r} is not client {int(i)}'s env ({self.names[int(i)]})"
        for key in ("eval_success_rate", "train_success_rate"):
            v = _f(m.get(key))
            if not math.isnan(v) and not 0.0 <= v <= 1.0:
                return f"its {key} {v} is outside [0, 1]"
        for key in ("eval_return", "train_return"):
            if math.isinf(_f(m.get(key))):
                return f"its {key} is infinite"
        for key in ("epoch", "env_steps"):
            count = m.get(key)
            if count is not None and (isinstance(count, bool) or not isinstance(count, int | np.integer) or int(count) < 0):
                return f"its {key} {_plain(count, 40)} is not a non-negative integer"
        return None

    def check_normalizers(self, arrays: list[np.ndarray], num_examples: Any = None) -> str | None:
        """The normaliser statistics a client adds this round (its ``count``, ``sum``, ``sumsq``
        less the global ones) must be those of at most the round's observations, each entry
        within ``B = federated.max_obs_abs``: ``0 <= dc <= 2 (n + envs)`` (a goal normaliser
        sees the desired and the achieved goal of every step; ``n`` the round's env steps,
        ``num_examples`` if given, else ``max_steps``), ``|ds| <= dc B``,
        ``ds^2 / dc <= dq <= dc B^2`` per entry (Cauchy-Schwarz), and nothing added when ``dc = 0``.
        """
        bound = float(self.fed.max_obs_abs)
        steps = self.max_steps if num_examples is None else int(num_examples)
        most = 2 * (steps + self.max_envs)
        stats: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
        for a, g, e in zip(arrays, self.global_arrays, self.entries):
            if e.kind == "norm":
                stats.setdefault(e.module, {})[e.key] = (np.asarray(a, np.float64), np.asarray(g, np.float64))
        for module, st in stats.items():
            if set(st) != set(params.NORM_STATS):
                continue
            dc = float(st["count"][0] - st["count"][1])
            ds = st["sum"][0] - st["sum"][1]
            dq = st["sumsq"][0] - st["sumsq"][1]
            if not (0.0 <= dc <= most and dc == math.floor(dc)):
                return f"{module}.count adds {dc:.6g} observations, not an integer in [0, {most}] this round"
            tol = 1e-9
            if np.any(np.abs(ds) > dc * bound * (1 + tol)):
                return (f"{module}.sum adds {float(np.abs(ds).max()):.3g}, more than count {dc:.6g} x "
                        f"federated.max_obs_abs={bound:g}")  # fmt: skip
            if np.any(dq > dc * bound**2 * (1 + tol)):
                return (f"{module}.sumsq adds {float(dq.max()):.3g}, more than count {dc:.6g} x "
                        f"federated.max_obs_abs^2={bound**2:g}")  # fmt: skip
            least = np.square(ds) / dc if dc > 0 else np.zeros_like(ds)
            if np.any(dq < least * (1 - 1e-6) - 1e-9 * (1 + np.abs(dq))):
                return f"{module}.sumsq adds less than sum^2 / count (no set of observations has those sums)"
        return None

    def _check_arrays(self, arrays: list[np.ndarray]) -> str | None:
        """Layout, dtypes, finiteness and the networks' update norm."""
        if len(arrays) != len(self.entries) or any(tuple(a.shape) != e.shape for a, e in zip(arrays, self.entries)):
            return f"its weights do not match the global model {self.dims}"
        for a, g, e in zip(arrays, self.global_arrays, self.entries):
            if a.dtype != g.dtype:
                return f"{e.name} has dtype {a.dtype}, the global model {g.dtype}"
            if not np.isfinite(a).all():
                return f"{e.name} has non-finite values"
            if e.kind == "net" and e.name.endswith(NON_NEGATIVE) and bool((np.asarray(a) < 0).any()):
                return f"{e.name} has negative values (a variance or a step count cannot be)"
        nets = [(np.asarray(a, np.float64), g) for a, g, k in zip(arrays, self.global_arrays, self.kinds) if k == "net"]
        change = math.sqrt(sum(float(np.square(a - g).sum()) for a, g in nets))
        bound, ratio = self.fed.max_update_norm, self.fed.max_update_ratio
        if bound is not None and change > float(bound):
            return f"its update norm {change:.3g} exceeds federated.max_update_norm={bound}"
        if ratio is not None:
            scale = math.sqrt(sum(float(np.square(np.asarray(g, np.float64)).sum()) for _, g in nets))
            if change > float(ratio) * scale:
                return (f"its update norm {change:.3g} is over federated.max_update_ratio={ratio} times "
                        f"the global networks' norm {scale:.3g}")  # fmt: skip
        return None

    def _robust(self, mean: list[np.ndarray], accepted: list[tuple[list[np.ndarray], float, dict[str, Any]]]) -> list[np.ndarray]:
        """Replace the network entries of ``mean`` by Flower's robust aggregate (median,
        trimmed mean or Krum) of the accepted clients; normaliser entries stay summed deltas."""
        from flwr.server.strategy import aggregate as fl

        net = [j for j, k in enumerate(self.kinds) if k == "net"]
        results = [([arrays[j] for j in net], max(int(w), 1)) for arrays, w, _ in accepted]
        if self.fed.strategy == "fedmedian":
            robust = fl.aggregate_median(results)
        elif self.fed.strategy == "fedtrimmedavg":
            robust = fl.aggregate_trimmed_avg(results, float(self.fed.trim_beta))
        else:  # krum
            robust = fl.aggregate_krum(results, int(self.fed.krum_malicious), 0)
        out = list(mean)
        for j, a in zip(net, robust):
            out[j] = np.asarray(a, dtype=self.global_arrays[j].dtype)
        return out

    # -------------------------------------------------------------------------------------

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """New global weights from the clients' results; writes ``global/round_<k>.pt``."""
        self._flush()
        accepted: list[tuple[list[np.ndarray], float, dict[str, Any]]] = []
        refused = len(failures)
        for err in failures:
            log.error(
                "round %d: a client failed: %s",
                server_round,
                repr(err) if isinstance(err, BaseException) else "returned a failed result",
            )
        checked = []
        for _proxy, res in results:
            arrays = parameters_to_ndarrays(res.parameters)
            m = dict(res.metrics)
            checked.append((arrays, res, m, self.check_update(arrays, res.num_examples, m)))
        # each client counts once a round: an index that several valid results claim is refused in all
        claims: dict[int, int] = {}
        for _, _, m, reason in checked:
            if reason is None:
                claims[int(m["client_index"])] = claims.get(int(m["client_index"]), 0) + 1
        for arrays, res, m, reason in checked:
            who = f"client {_plain(m.get('client_index', '?'))} '{_plain(m.get('env', '?'))}'"
            if reason is None and claims[int(m["client_index"])] > 1:
                reason = f"{claims[int(m['client_index'])]} results claim client_index {int(m['client_index'])}: all refused"
            if reason is not None:
                refused += 1
                log.error("round %d: refused %s: %s", server_round, who, reason)
                continue
            weight = 1.0 if self.fed.weighting == "uniform" else float(res.num_examples)
            accepted.append(
                (arrays, weight, {**m, "num_examples": int(res.num_examples), "weight": weight})
            )
        if not accepted or sum(w for _, w, _ in accepted) <= 0:
            log.error(
                "round %d: no client result to aggregate; the global model stays as it was",
                server_round,
            )
            self._row = {"round": server_round, "clients": 0, "refused": refused}
            return None, {}
        mean = params.aggregate(
            self.kinds, self.global_arrays, [a for a, _, _ in accepted], [w for _, w, _ in accepted]
        )
        if self.fed.strategy == "fedavgm":
            mean = self._momentum(mean)
        elif self.fed.strategy in ("fedmedian", "fedtrimmedavg", "krum"):
            mean = self._robust(mean, accepted)
        self.global_arrays = mean
        params.set_weights(self.agent, mean)
        self._results = [m for _, _, m in accepted]
        weights = [m["weight"] for m in self._results]
        row: dict[str, Any] = {
            "round": server_round,
            "clients": len(accepted),
            "refused": refused,
            "env_steps": sum(int(m["num_examples"]) for m in self._results),
            "eval_success_rate": params.weighted_mean(
                [_f(m.get("eval_success_rate")) for m in self._results], weights
            ),
            "eval_return": params.weighted_mean(
                [_f(m.get("eval_return")) for m in self._results], weights
            ),
        }
        for m in self._results:
            name = self._name(m)
            row[f"{name}/env_steps"] = int(m["num_examples"])
            row[f"{name}/eval_success_rate"] = _f(m.get("eval_success_rate"))
            row[f"{name}/eval_return"] = _f(m.get("eval_return"))
        self._row = row
        self._save(server_round, self._results)
        log.info(
            "round %d/%d: aggregated %d clients (%d refused) | eval_success %.3f | eval_return %.2f",
            server_round, self.fed.rounds, len(accepted), refused, row["eval_success_rate"], row["eval_return"],
        )  # fmt: skip
        if not self.fed.evaluate_global:
            self._flush()
        return ndarrays_to_parameters(mean), {}

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        """The global model's results on every client's task; writes the round's metrics row."""
        row = self._row or {"round": server_round}
        # a client's episode count weighs its result: bounded by the eval episodes it was asked for
        most = max(int(self.cfg.eval.episodes), 1)
        ms = [(dict(res.metrics), min(max(_f(res.num_examples), 0.0), most)) for _, res in results]
        ms = [(m, n) for m, n in ms if math.isfinite(n) and self.check_metrics(m) is None]
        seen = [int(m["client_index"]) for m, _ in ms]
        ms = [(m, n) for m, n in ms if seen.count(int(m["client_index"])) == 1]  # each client counts once
        row["global_eval_success_rate"] = params.weighted_mean(
            [_f(m.get("eval_success_rate")) for m, _ in ms], [n for _, n in ms]
        )
        row["global_eval_return"] = params.weighted_mean(
            [_f(m.get("eval_return")) for m, _ in ms], [n for _, n in ms]
        )
        for m, _ in ms:
            name = self._name(m)
            row[f"{name}/global_eval_success_rate"] = _f(m.get("eval_success_rate"))
            row[f"{name}/global_eval_return"] = _f(m.get("eval_return"))
        self._row = row
        log.info(
            "round %d/%d: global model | eval_success %.3f | eval_return %.2f",
            server_round, self.fed.rounds, row["global_eval_success_rate"], row["global_eval_return"],
        )  # fmt: skip
        self._flush()
        loss = -row["global_eval_return"] if math.isfinite(row["global_eval_return"]) else None
        return loss, {}

    # -------------------------------------------------------------------------------------

    def _name(self, m: dict[str, Any]) -> str:
        i = int(m.get("client_index", -1))
        return self.names[i] if 0 <= i < len(self.names) else client_name(i, str(m.get("env", "?")))

    def _momentum(self, mean: list[np.ndarray]) -> list[np.ndarray]:
        beta, lr = float(self.fed.server_momentum), float(self.fed.server_lr)
        out: list[np.ndarray] = []
        if self.momentum is None:
            self.momentum = [np.zeros_like(g, dtype=np.float64) for g in self.global_arrays]
        for j, (g, a) in enumerate(zip(self.global_arrays, mean)):
            if self.kinds[j] != "net":
                out.append(a)
                continue
            self.momentum[j] = beta * self.momentum[j] + (np.asarray(g, np.float64) - a)
            out.append((g - lr * self.momentum[j]).astype(g.dtype))
        return out

    def _save(self, rnd: int, results: list[dict[str, Any]]) -> None:
        from rlfw.training.checkpoint import atomic_torch_save

        state = {
            "round": rnd,
            "agent": {k: m.state_dict() for k, m in self.agent.modules().items()},
            "dims": {"obs": self.dims.obs, "goal": self.dims.goal, "act": self.dims.act},
            "strategy": str(self.fed.strategy),
            "weighting": str(self.fed.weighting),
            "clients": results,
            "config": OmegaConf.to_container(self.cfg, resolve=True),
        }
        atomic_torch_save(state, self.run_dir / "global" / f"round_{rnd}.pt")
        atomic_torch_save(state, self.run_dir / "global" / "last.pt")

    def _flush(self) -> None:
        """Append the pending round row to federated_metrics.csv."""
        from rlfw.training.csvfiles import CsvLog

        if not self._row:
            return
        if self._csv is None:
            self._csv = CsvLog(self.run_dir / "federated_metrics.csv", metric_columns(self.names))
        self._row["wall_time_s"] = time.perf_counter() - self.t0
        self._csv.write([self._row])
        self._row = {}

    def close(self) -> None:
        """Write a pending row and close the CSV."""
        self._flush()
        if self._csv is not None:
            self._csv.close()
            self._csv = None


def round_steps(epochs_per_round: int, train: Any) -> int:
    """The env steps one client collects in a round: ``federated.epochs_per_round`` x
    ``train.cycles_per_epoch`` x ``train.steps_per_cycle`` (x ``train.workers``)."""
    return (int(epochs_per_round) * int(train.cycles_per_epoch) * int(train.steps_per_cycle)
            * max(int(train.get("workers", 1)), 1))  # fmt: skip


def _plain(x: Any, most: int = 60) -> str:
    """``x`` as text for one log line: at most ``most`` characters, control characters escaped
    (a client's string cannot forge a line)."""
    text = str(x)[:most]
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _f(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan
