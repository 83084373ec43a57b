"""Federated training over Flower: aggregation, config checks, simulation and real processes.

The end-to-end tests run ``python -m rlfw.federated`` in subprocesses (the simulation engine
starts Ray; the deployment test starts a server and two clients on 127.0.0.1) with a schedule
of 50 env steps and 5 updates per client and round.
"""

from __future__ import annotations

import csv
import datetime
import ipaddress
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("flwr")
torch = pytest.importorskip("torch")

from rlfw.errors import ConfigError  # noqa: E402
from rlfw.federated.params import aggregate, weighted_mean  # noqa: E402
from rlfw.federated.setup import check_shapes, plan  # noqa: E402

ENVS = ["FetchPush-v4", "FetchSlide-v4"]
NAMES = [f"{i}_{e}" for i, e in enumerate(ENVS)]
ROUNDS = 2
TINY = [
    f"federated.clients=[{','.join(ENVS)}]",
    f"federated.rounds={ROUNDS}",
    "federated.keep_client_rounds=true",
    "train.cycles_per_epoch=1",
    "train.steps_per_cycle=50",
    "train.updates_per_cycle=5",
    "train.batch_size=32",
    "eval.episodes=1",
    "eval.confirm_episodes=2",  # the evaluation protocol at a test's size (defaults: 100 each)
    "eval.final_episodes=2",
    "algo.actor_hidden=[32]",
    "algo.critic_hidden=[32]",
    "buffer.capacity=5000",
    "logger.plots=false",
]
ENV = dict(
    os.environ,
    PYTHONWARNINGS="ignore",
    HYDRA_FULL_ERROR="0",
    RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO="0",
)


def cli(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "rlfw.federated", *args]


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def load(path: Path) -> dict:
    return torch.load(path, weights_only=False)


def check_federation(server_dir: Path, client_dirs: list[Path], targets: bool = True) -> None:
    """Global checkpoint of every round == the examples-weighted mean of the clients' weights
    that round (normaliser statistics: previous global + the clients' summed deltas); one row
    per round in federated_metrics.csv; per-client metrics.csv."""
    for k in range(1, ROUNDS + 1):
        glob, prev = (
            load(server_dir / "global" / f"round_{k}.pt"),
            load(server_dir / "global" / f"round_{k - 1}.pt"),
        )
        sent = [load(d / "federated" / f"round_{k}.pt") for d in client_dirs]
        w = np.array([s["num_examples"] for s in sent], np.float64)
        assert (w > 0).all() and glob["round"] == k
        names = list(sent[0]["weights"])
        assert (
            any(n.startswith("critic_target.") for n in names) == targets
            and "obs_norm.sumsq" in names
        )
        for name in names:
            module, key = name.split(".", 1)
            got = glob["agent"][module][key].double().numpy()
            xs = [np.asarray(s["weights"][name], np.float64) for s in sent]
            if module.endswith("_norm"):
                g0 = prev["agent"][module][key].double().numpy()
                want = g0 + sum(x - g0 for x in xs)
            else:
                want = sum(wi * x for wi, x in zip(w / w.sum(), xs))
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=f"round {k} {name}")
        norm = glob["agent"]["obs_norm"]
        np.testing.assert_allclose(
            norm["mean"].numpy(), (norm["sum"] / norm["count"]).float().numpy(), rtol=1e-5
        )
    assert load(server_dir / "global" / "last.pt")["round"] == ROUNDS
    rows = read_csv(server_dir / "federated_metrics.csv")
    assert [int(r["round"]) for r in rows] == list(range(1, ROUNDS + 1))
    for r in rows:
        assert int(r["clients"]) == 2 and int(r["refused"]) == 0 and int(r["env_steps"]) == 100
        for key in (
            "eval_success_rate",
            "eval_return",
            "global_eval_success_rate",
            "global_eval_return",
        ):
            assert r[key] != "", key
        for n in NAMES:
            assert r[f"{n}/eval_return"] != "" and r[f"{n}/global_eval_return"] != ""
        rets = [float(r[f"{n}/eval_return"]) for n in NAMES]
        assert float(r["eval_return"]) == pytest.approx(np.mean(rets), rel=1e-4)  # equal env steps
    for d in client_dirs:
        metrics = read_csv(d / "metrics.csv")
        assert [int(m["epoch"]) for m in metrics] == list(range(1, ROUNDS + 1))
        assert [int(m["round"]) for m in read_csv(d / "federated_rounds.csv")] == list(
            range(1, ROUNDS + 1)
        )


# -------------------------------------------------------------------------------------------
# fast


def test_aggregate_weighted_mean_and_summed_normaliser_deltas():
    g = [np.zeros((2, 2), np.float32), np.array(10.0), np.array([1.0, 2.0])]
    c1 = [np.ones((2, 2), np.float32), np.array(14.0), np.array([2.0, 2.0])]
    c2 = [np.full((2, 2), 4.0, np.float32), np.array(11.0), np.array([1.0, 5.0])]
    out = aggregate(["net", "norm", "norm"], g, [c1, c2], [300, 100])
    np.testing.assert_allclose(out[0], np.full((2, 2), (300 * 1 + 100 * 4) / 400))
    assert out[0].dtype == np.float32
    assert float(out[1]) == 10 + 4 + 1
    np.testing.assert_allclose(out[2], [2.0, 5.0])
    assert weighted_mean([1.0, float("nan"), 3.0], [1, 5, 3]) == pytest.approx(2.5)
    with pytest.raises(ValueError):
        aggregate(["net"], [g[0]], [], [])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "federated.strategy=fedsgd",
            "unknown federated.strategy 'fedsgd'; choose one of: fedavg, fedavgm",
        ),
        (
            "federated.clients=[FetchPush-v4,FetchPsh-v4]",
            "unknown client env 'FetchPsh-v4' in federated.clients[1]",
        ),
        ("federated.mode=client", "federated.mode=client needs federated.client_index"),
        ("federated.rounds=0", "federated.rounds must be >= 1"),
        ("federated.roundz=2", "federated.roundz"),
        (
            "federated.tls.root_cert=/nonexistent.pem",
            "federated.tls.* applies to federated.mode=server|client",
        ),
        (
            "federated.mode=server federated.tls.root_cert=/nonexistent.pem",
            "TLS on the server needs all of",
        ),
    ],
)
def test_bad_federated_config_is_one_line(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        plan(override.split())
    assert "\n" not in str(err.value)


def test_client_configs_take_the_shared_overrides():
    p = plan([*TINY, "seed=3", "train.epochs=99", "federated.epochs_per_round=2"])
    assert [c.env.id for c in p.clients] == ENVS
    assert [c.seed for c in p.clients] == [3, 4]
    assert all(c.train.epochs == 2 * ROUNDS and c.train.batch_size == 32 for c in p.clients)
    assert all(list(c.algo.actor_hidden) == [32] for c in p.clients)


def test_fetch_reach_client_is_refused_with_both_shapes():
    p = plan([*TINY, "federated.clients=[FetchPush-v4,FetchReach-v4]"])
    with pytest.raises(ConfigError) as err:
        check_shapes(p)
    msg = str(err.value)
    assert "federated.clients[1] 'FetchReach-v4' has (obs 10, goal 3, action 4)" in msg
    assert "'FetchPush-v4') has (obs 25, goal 3, action 4)" in msg
    assert "\n" not in msg


def test_cli_refuses_fetch_reach_before_flower_starts(tmp_path):
    run_dir = tmp_path / "run"
    res = subprocess.run(
        cli([*TINY, "federated.clients=[FetchPush-v4,FetchReach-v4]", f"hydra.run.dir={run_dir}"]),
        capture_output=True, text=True, timeout=120, env=ENV, cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 2, res.stderr[-2000:]
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("rlfw.federated: error:")]
    assert len(lines) == 1 and "'FetchReach-v4' has (obs 10, goal 3, action 4)" in lines[0]
    assert not (run_dir / "global").exists()


# -------------------------------------------------------------------------------------------
# end to end


def test_simulation_two_rounds_two_fetch_clients(tmp_path):
    run_dir = tmp_path / "sim"
    res = subprocess.run(
        cli([*TINY, f"hydra.run.dir={run_dir}"]),
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    check_federation(run_dir, [run_dir / "clients" / n for n in NAMES])


@pytest.mark.slow  # moved out of the default run (about 15 minutes on 2 cores); nox -s slow and CI run it
@pytest.mark.parametrize("algo", ["sac", "tqc", "crossq"])
def test_simulation_with_each_soft_algo(tmp_path, algo):
    """The exchanged modules come from the agent: the temperature, TQC's quantile critics and
    CrossQ's batch-renormalisation statistics (no target networks) are averaged like the rest."""
    run_dir = tmp_path / "sim"
    res = subprocess.run(cli([*TINY, f"algo={algo}", f"hydra.run.dir={run_dir}"]), capture_output=True,
                         text=True, timeout=300, env=ENV, cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr[-4000:]
    check_federation(run_dir, [run_dir / "clients" / n for n in NAMES], targets=algo != "crossq")
    glob = load(run_dir / "global" / "last.pt")["agent"]
    assert "temperature" in glob
    if algo == "crossq":
        assert "input_norm.running_mean" in glob["critic"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _certificates(d: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 / localhost (PEM files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def cert(subject: str, key, issuer: str, issuer_key, ca: bool) -> x509.Certificate:
        b = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            san = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = cert("rlfw test CA", ca_key, "rlfw test CA", ca_key, True)
    server = cert("127.0.0.1", key, "rlfw test CA", ca_key, False)
    paths = (d / "ca.pem", d / "server.pem", d / "server.key")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


def _deploy(tmp_path: Path, tls: bool) -> None:
    port = _free_port()
    common = [*TINY, f"federated.server_address=127.0.0.1:{port}", "federated.connect_timeout_s=60"]
    server_tls: list[str] = []
    client_tls: list[str] = []
    if tls:
        ca, crt, key = _certificates(tmp_path)
        server_tls = [
            f"federated.tls.root_cert={ca}",
            f"federated.tls.server_cert={crt}",
            f"federated.tls.server_key={key}",
        ]
        client_tls = [f"federated.tls.root_cert={ca}"]
    logs = {name: (tmp_path / f"{name}.log").open("w") for name in ("server", "client0", "client1")}
    procs = {
        "server": subprocess.Popen(
            cli([*common, *server_tls, "federated.mode=server", f"hydra.run.dir={tmp_path / 'server'}"]),
            stdout=logs["server"], stderr=subprocess.STDOUT, env=ENV, cwd=tmp_path, start_new_session=True,
        )
    }  # fmt: skip
    for i in range(2):
        procs[f"client{i}"] = subprocess.Popen(
            cli([*common, *client_tls, "federated.mode=client", f"federated.client_index={i}", f"hydra.run.dir={tmp_path / f'client{i}'}"]),
            stdout=logs[f"client{i}"], stderr=subprocess.STDOUT, env=ENV, cwd=tmp_path, start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:  # stop early when any process fails
            codes = {name: p.poll() for name, p in procs.items()}
            if all(c is not None for c in codes.values()) or any(
                c not in (None, 0) for c in codes.values()
            ):
                break
            time.sleep(0.5)
    finally:
        for p in procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        for f in logs.values():
            f.close()
    tails = {n: (tmp_path / f"{n}.log").read_text()[-3000:] for n in procs}
    assert codes == {"server": 0, "client0": 0, "client1": 0}, tails
    if tls:
        assert "SSL is enabled" in (tmp_path / "server.log").read_text()
    check_federation(
        tmp_path / "server", [tmp_path / f"client{i}" / "clients" / n for i, n in enumerate(NAMES)]
    )


def test_server_and_client_processes_on_loopback(tmp_path):
    _deploy(tmp_path, tls=False)


@pytest.mark.slow
def test_server_and_client_processes_on_loopback_with_tls(tmp_path):
    _deploy(tmp_path, tls=True)


def test_strategy_fedavgm_step_and_server_side_refusal(tmp_path):
    """One aggregate_fit: FedAvgM with server_lr 0.5 lands halfway between the old global model
    and the clients' weighted mean; a result of another layout is refused and left out."""
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters

    from rlfw.federated.params import get_weights
    from rlfw.federated.server import RLStrategy
    from rlfw.federated.setup import build_agent

    p = plan(
        [
            *TINY,
            "federated.strategy=fedavgm",
            "federated.server_lr=0.5",
            "federated.evaluate_global=false",
        ]
    )
    dims, info = check_shapes(p)
    strategy = RLStrategy(p.cfg, build_agent(p.clients[0], info), dims, tmp_path)
    g0 = [a.copy() for a in strategy.global_arrays]
    rng = np.random.default_rng(0)
    # network weights moved; normaliser statistics as sent (the server checks their deltas)
    xs = [[a + rng.normal(size=a.shape).astype(a.dtype) if e.kind == "net" else a.copy()
           for a, e in zip(g0, strategy.entries)] for _ in range(2)]  # fmt: skip

    def res(arrays, n, i):
        metrics = {
            "client_index": i,
            "env": ENVS[i % 2],
            "eval_return": -float(i),
            "eval_success_rate": 0.0,
        }
        return None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), n, metrics)

    bad = [np.zeros((3,), np.float32)]
    strategy.aggregate_fit(1, [res(xs[0], 30, 0), res(xs[1], 10, 1), res(bad, 5, 1)], [])
    strategy.close()
    got = get_weights(strategy.agent)
    for j, e in enumerate(strategy.entries):
        if e.kind == "net":
            mean = 0.75 * xs[0][j].astype(np.float64) + 0.25 * xs[1][j]
            np.testing.assert_allclose(got[j], g0[j] - 0.5 * (g0[j] - mean), rtol=1e-5, atol=1e-5)
    (row,) = read_csv(tmp_path / "federated_metrics.csv")
    assert (row["clients"], row["refused"], row["env_steps"]) == ("2", "1", "40")
    assert float(row["eval_return"]) == pytest.approx(-0.25)
    assert load(tmp_path / "global" / "round_1.pt")["strategy"] == "fedavgm"


@pytest.mark.parametrize("strategy", ["fedavg", "fedmedian"])
def test_server_drops_poisoned_updates_and_names_the_clients(tmp_path, caplog, strategy):
    """One client sends NaN weights, one sends weights 1e6 times too large: both are dropped
    with a log line naming them; the global model stays finite and equals the honest clients'
    aggregate."""
    import logging

    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters

    from rlfw.federated.params import get_weights
    from rlfw.federated.server import RLStrategy
    from rlfw.federated.setup import build_agent

    p = plan([*TINY, f"federated.strategy={strategy}", "federated.evaluate_global=false",
              "federated.clients=[FetchPush-v4,FetchSlide-v4,FetchPush-v4,FetchSlide-v4]"])  # fmt: skip
    dims, info = check_shapes(p)
    strategy_ = RLStrategy(p.cfg, build_agent(p.clients[0], info), dims, tmp_path)
    g0 = [a.copy() for a in strategy_.global_arrays]
    rng = np.random.default_rng(0)
    honest = [[a + (0.01 * rng.normal(size=a.shape)).astype(a.dtype) if e.kind == "net" else a.copy()
               for a, e in zip(g0, strategy_.entries)] for _ in range(2)]  # fmt: skip
    nan = [a.copy() for a in g0]
    nan[0][...] = np.nan
    huge = [a * 1e6 for a in g0]

    def res(arrays, i):
        metrics = {
            "client_index": i,
            "env": p.fed.clients[i],
            "eval_return": 0.0,
            "eval_success_rate": 0.0,
        }
        return None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), 50, metrics)

    with caplog.at_level(logging.ERROR, logger="rlfw"):
        strategy_.aggregate_fit(
            1, [res(honest[0], 0), res(nan, 1), res(honest[1], 2), res(huge, 3)], []
        )
    strategy_.close()
    log_text = caplog.text
    assert "refused client 1 'FetchSlide-v4'" in log_text and "non-finite" in log_text
    assert "refused client 3 'FetchSlide-v4'" in log_text and "max_update_ratio" in log_text
    got = get_weights(strategy_.agent)
    for j, e in enumerate(strategy_.entries):
        assert np.isfinite(got[j]).all()
        if e.kind == "net":  # mean, and median, of two honest clients: their mean
            expected = 0.5 * (honest[0][j].astype(np.float64) + honest[1][j])
            np.testing.assert_allclose(got[j], expected, rtol=1e-5, atol=1e-5)
    (row,) = read_csv(tmp_path / "federated_metrics.csv")
    assert (row["clients"], row["refused"]) == ("2", "2")


# -------------------------------------------------------------------------------------------
# poisoned numbers: normaliser statistics, num_examples, metrics


def _honest(g0, entries, rng, k):
    """What an honest client returns: networks moved a little, each normaliser fed ``k``
    observations with entries in [-2, 2] (count += k, sum += x.sum, sumsq += (x^2).sum)."""
    out = [a.copy() for a in g0]
    index = {e.name: j for j, e in enumerate(entries)}
    for j, e in enumerate(entries):
        if e.kind == "net":
            out[j] = out[j] + (0.01 * rng.normal(size=out[j].shape)).astype(out[j].dtype)
    for e in entries:
        if e.kind == "norm" and e.key == "count":
            x = rng.uniform(-2, 2, size=(k, g0[index[f"{e.module}.sum"]].shape[0]))
            out[index[e.name]] = out[index[e.name]] + k
            out[index[f"{e.module}.sum"]] = out[index[f"{e.module}.sum"]] + x.sum(0)
            out[index[f"{e.module}.sumsq"]] = out[index[f"{e.module}.sumsq"]] + np.square(x).sum(0)
    return out


def _add(name, delta):
    """A poison: add ``delta`` to the entry ``name`` of an honest result."""

    def poison(arrays, entries):
        j = [e.name for e in entries].index(name)
        arrays[j] = (arrays[j] + delta).astype(arrays[j].dtype)
        return arrays

    return poison


# (case, poison of the arrays, num_examples, metrics change, the refusal's words)
POISONS = [
    ("sums of 1e30: global obs mean to 5e27", _add("obs_norm.sum", 1e30), 50, {}, "obs_norm.sum adds"),
    ("count -1e6: normalisation switched off", _add("obs_norm.count", -1e6), 50, {}, "obs_norm.count adds"),
    ("negative count reverses the statistics", _add("goal_norm.count", -100), 50, {}, "goal_norm.count adds"),
    ("count of more steps than the round has", _add("obs_norm.count", 10**6), 50, {}, "obs_norm.count adds"),
    ("sumsq of 1e30", _add("obs_norm.sumsq", 1e30), 50, {}, "obs_norm.sumsq adds"),
    ("sumsq below sum^2/count", _add("goal_norm.sumsq", -1e3), 50, {}, "less than sum^2 / count"),
    ("num_examples=10**15 replaces the global model", None, 10**15, {}, "num_examples 1000000000000000"),
    ("num_examples=-1000 voids the round", None, -1000, {}, "num_examples -1000"),
    ("num_examples above the round's steps", None, 51, {}, "outside [0, 50]"),
    ("a client_index that names no client", None, 50, {"client_index": "abc"}, "client_index 'abc'"),
    ("a success rate of 1e9", None, 50, {"eval_success_rate": 1e9}, "eval_success_rate"),
]  # fmt: skip


@pytest.fixture(scope="module")
def three_clients():
    """A plan of three Fetch clients (TINY: 50 env steps a round) and the global model's sizes."""
    p = plan([*TINY, "federated.evaluate_global=false",
              "federated.clients=[FetchPush-v4,FetchSlide-v4,FetchPush-v4]"])  # fmt: skip
    dims, info = check_shapes(p)
    return p, dims, info


@pytest.mark.parametrize(("case", "poison", "n", "metrics", "words"), POISONS, ids=[c[0] for c in POISONS])
def test_poisoned_client_is_refused_and_the_honest_aggregate_goes_on(
    tmp_path, caplog, three_clients, case, poison, n, metrics, words
):
    """Two honest clients and one poisoned result in one aggregate_fit: the poisoned one is
    refused with one log line naming it, and the global networks and normaliser statistics
    equal the aggregate of the honest two (FedAvg mean, summed normaliser deltas)."""
    import logging

    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters

    from rlfw.federated.params import aggregate as fedavg
    from rlfw.federated.params import get_weights
    from rlfw.federated.server import RLStrategy
    from rlfw.federated.setup import build_agent

    p, dims, info = three_clients
    strategy = RLStrategy(p.cfg, build_agent(p.clients[0], info), dims, tmp_path)
    assert strategy.max_steps == 50
    g0 = [a.copy() for a in strategy.global_arrays]
    rng = np.random.default_rng(1)
    honest = [_honest(g0, strategy.entries, rng, 50) for _ in range(2)]
    bad = _honest(g0, strategy.entries, rng, 50)
    if poison is not None:
        bad = poison(bad, strategy.entries)

    def res(arrays, i, n_, extra=None):
        m = {"client_index": i, "env": p.fed.clients[i], "eval_return": -1.0,
             "eval_success_rate": 0.5, **(extra or {})}  # fmt: skip
        return None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), n_, m)

    with caplog.at_level(logging.ERROR, logger="rlfw"):
        strategy.aggregate_fit(1, [res(honest[0], 0, 50), res(bad, 2, n, metrics), res(honest[1], 1, 50)], [])
    strategy.close()
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 1 and words in refusals[0], refusals
    assert "client 2 'FetchPush-v4'" in refusals[0] or "client abc" in refusals[0]
    want = fedavg(strategy.kinds, g0, honest, [50, 50])
    got = get_weights(strategy.agent)
    for j, e in enumerate(strategy.entries):
        np.testing.assert_allclose(got[j], want[j], rtol=1e-6, atol=1e-6, err_msg=e.name)
    mean = strategy.agent.obs_norm.mean.numpy()
    assert np.abs(mean).max() <= 2.0  # honest observations lie in [-2, 2]
    (row,) = read_csv(tmp_path / "federated_metrics.csv")
    assert (row["clients"], row["refused"], row["env_steps"]) == ("2", "1", "100")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("federated.round_timeout_s=-1", "federated.round_timeout_s must be > 0"),
        ("federated.connect_timeout_s=-5", "federated.connect_timeout_s must be > 0"),
        ("federated.krum_malicious=2", "federated.krum_malicious must be in [0, 1]"),
        ("federated.server_address=localhost:abc", "federated.server_address must be HOST:PORT"),
        ("federated.max_update_norm=inf", "federated.max_update_norm=inf must be a finite number"),
        ("federated.max_obs_abs=0", "federated.max_obs_abs must be > 0"),
    ],
)
def test_federated_ranges_are_one_line(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        plan([override])
    assert "\n" not in str(err.value)


_MALICIOUS = '''
import sys

import numpy as np

from rlfw.federated import app, client, params
from rlfw.federated.setup import plan


class Poisoned(client.ClientFactory):
    """Client 1 trains honestly, then adds 1e30 to its observation normaliser's sums."""

    def __call__(self, context):
        index = int(context.node_config["partition-id"])
        c = self.get(index)
        if index == 1 and not getattr(c, "poisoned", False):
            fit = c.fit

            def bad_fit(parameters, config):
                weights, n, metrics = fit(parameters, config)
                names = [e.name for e in params.layout(c.loop.agent)]
                j = names.index("obs_norm.sum")
                weights[j] = weights[j] + 1e30
                return weights, n, metrics

            c.fit, c.poisoned = bad_fit, True
        return c.to_client()


client.ClientFactory = Poisoned
app.simulate(plan(sys.argv[2:]), sys.argv[1], num_cpus=2)
'''


def test_simulation_with_one_malicious_client(tmp_path):
    """Three clients in Flower's simulation engine; client 1 sends normaliser sums of 1e30
    every round. It is refused every round, and the global model is the honest two's
    aggregate: its observation mean stays that of real observations."""
    script = tmp_path / "malicious.py"
    script.write_text(_MALICIOUS)
    run_dir = tmp_path / "sim"
    envs = ["FetchPush-v4", "FetchSlide-v4", "FetchPush-v4"]
    args = [*TINY, f"federated.clients=[{','.join(envs)}]", "federated.evaluate_global=false"]
    res = subprocess.run([sys.executable, str(script), str(run_dir), *args], capture_output=True,
                         text=True, timeout=300, env=ENV, cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr[-4000:]
    assert "refused client 1 'FetchSlide-v4': obs_norm.sum adds" in res.stderr + res.stdout
    rows = read_csv(run_dir / "federated_metrics.csv")
    assert [(r["clients"], r["refused"]) for r in rows] == [("2", "1")] * ROUNDS
    honest = [run_dir / "clients" / f"{i}_{envs[i]}" for i in (0, 2)]
    for k in range(1, ROUNDS + 1):
        glob = load(run_dir / "global" / f"round_{k}.pt")["agent"]
        prev = load(run_dir / "global" / f"round_{k - 1}.pt")["agent"]
        sent = [load(d / "federated" / f"round_{k}.pt")["weights"] for d in honest]
        for key in ("count", "sum", "sumsq"):
            g0 = prev["obs_norm"][key].double().numpy()
            want = g0 + sum(np.asarray(s[f"obs_norm.{key}"], np.float64) - g0 for s in sent)
            np.testing.assert_allclose(glob["obs_norm"][key].double().numpy(), want, rtol=1e-9)
        w = next(iter(glob["actor"]))
        np.testing.assert_allclose(glob["actor"][w].numpy(), 0.5 * (sent[0][f"actor.{w}"] + sent[1][f"actor.{w}"]),
                                   rtol=1e-5, atol=1e-6)  # fmt: skip
        assert np.abs(glob["obs_norm"]["mean"].numpy()).max() < 100  # Fetch observations


def test_clients_cannot_poison_state_or_forge_metrics(tmp_path):
    """Issue 33, class 4: a negative batch-renorm running_var (CrossQ), two results claiming
    one client_index, an env metric with a newline, a junk metric and a wrong env are refused;
    an honest result is aggregated, and what a round checkpoint stores is what was checked."""
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters

    from rlfw.federated.server import RLStrategy
    from rlfw.federated.setup import build_agent

    p = plan([*TINY, "algo=crossq", "federated.evaluate_global=false"])
    dims, info = check_shapes(p)
    strategy = RLStrategy(p.cfg, build_agent(p.clients[0], info), dims, tmp_path)
    g0 = [a.copy() for a in strategy.global_arrays]
    var = [j for j, e in enumerate(strategy.entries) if e.name.endswith(".running_var")]
    assert var, "CrossQ's batch renormalisation has running variances"

    def res(arrays, i, **metrics):
        m = {"client_index": i, "env": ENVS[i % 2], "eval_return": -1.0, "eval_success_rate": 0.0, **metrics}
        return None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), 5, m)

    negative = [a.copy() for a in g0]
    negative[var[0]] = np.full_like(negative[var[0]], -5.0)
    assert "negative values" in strategy.check_update(negative, 5, {"client_index": 0, "env": ENVS[0]})
    assert "env" in strategy.check_metrics({"client_index": 0, "env": "FetchPush-v4\n[rlfw][INFO] forged"})
    assert "do not send" in strategy.check_metrics({"client_index": 0, "env": ENVS[0], "junk": "x" * 10**6})
    assert "not client 1's env" in strategy.check_metrics({"client_index": 1, "env": ENVS[0]})
    strategy.aggregate_fit(1, [res(g0, 0), res(g0, 1), res(g0, 1, eval_return=-2.0), res(negative, 0)], [])
    strategy.close()
    (row,) = read_csv(tmp_path / "federated_metrics.csv")
    assert (row["clients"], row["refused"]) == ("1", "3")  # client 0's honest result only
    saved = load(tmp_path / "global" / "round_1.pt")
    assert [c["client_index"] for c in saved["clients"]] == [0]
    assert bool(np.all(np.asarray(strategy.global_arrays[var[0]]) >= 0))
