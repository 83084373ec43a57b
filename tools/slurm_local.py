"""A real single-node SLURM for tests: munged, slurmctld and slurmd as ordinary processes.

Debian's ``slurm-wlm`` and ``munge`` (installed with apt-get when missing, as root) run from a
generated ``slurm.conf`` for this host in a directory of their own: their keys, sockets, state,
spool and logs stay in it, nothing under /etc is touched, and :meth:`LocalSlurm.stop` ends them.
Clients (``sbatch``, ``squeue``, submitit) find the cluster through the ``SLURM_CONF``
environment variable, which :meth:`LocalSlurm.start` sets in this process (children inherit it).

There is no accounting database (``AccountingStorageType=accounting_storage/none``): ``sacct``
fails, which submitit tolerates (it also watches its result files).

Usage::

    with LocalSlurm(tmp_dir) as slurm:      # or: python tools/slurm_local.py start|stop DIR
        subprocess.run(["sbatch", "--wrap", "hostname"], env=slurm.env)
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PACKAGES = ("slurm-wlm", "munge")


def ensure_installed() -> None:
    """Install ``slurm-wlm`` and ``munge`` with apt-get when ``slurmctld`` is not on PATH.

    Raises:
        RuntimeError: they are missing and cannot be installed (not root, no apt-get).
    """
    if all(shutil.which(b) for b in ("slurmctld", "slurmd", "munged", "sbatch")):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise RuntimeError("SLURM is not installed: apt-get install slurm-wlm munge (as root)")
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL, check=True)
        subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, check=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _memory_mb() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return 1024


class LocalSlurm:
    """One SLURM controller and one compute node (this host) in ``root``.

    Args:
        root: the directory for the config, keys, sockets, state and logs (created).
        cpus: CPUs the node offers (default: this machine's).

    Attributes:
        conf: the ``slurm.conf`` path; ``env``: ``os.environ`` plus ``SLURM_CONF``.
    """

    def __init__(self, root: str | Path, cpus: int | None = None) -> None:
        self.root = Path(root).resolve()
        self.cpus = cpus or os.cpu_count() or 1
        self.conf = self.root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.host = socket.gethostname().split(".")[0]

    def write_config(self) -> None:
        """Write ``slurm.conf`` (one node: this host, all its CPUs, 90% of its memory; one
        partition ``rlfw``; requeue allowed) and the munge key."""
        for d in ("state", "spool", "munge"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "munge", 0o700)
        key = self.root / "munge" / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
            os.chmod(key, 0o400)
        r = self.root
        self.conf.write_text(
            "\n".join([
                "ClusterName=rlfwtest",
                f"SlurmctldHost={self.host}(127.0.0.1)",
                f"SlurmUser={_user()}",
                f"SlurmdUser={_user()}",
                f"SlurmctldPort={_free_port()}",
                f"SlurmdPort={_free_port()}",
                "AuthType=auth/munge",
                "CredType=cred/munge",
                f"AuthInfo=socket={r}/munge/munge.socket",
                f"StateSaveLocation={r}/state",
                f"SlurmdSpoolDir={r}/spool",
                f"SlurmctldPidFile={r}/slurmctld.pid",
                f"SlurmdPidFile={r}/slurmd.pid",
                f"SlurmctldLogFile={r}/slurmctld.log",
                f"SlurmdLogFile={r}/slurmd.log",
                "ProctrackType=proctrack/linuxproc",
                "TaskPlugin=task/none",
                "JobAcctGatherType=jobacct_gather/none",
                "AccountingStorageType=accounting_storage/none",
                "JobCompType=jobcomp/none",
                "SchedulerType=sched/backfill",
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_CPU",
                "MpiDefault=none",
                "ReturnToService=2",
                "JobRequeue=1",
                "KillWait=30",
                "MinJobAge=600",
                f"NodeName={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} "
                f"RealMemory={int(_memory_mb() * 0.9)} State=UNKNOWN",
                f"PartitionName=rlfw Nodes={self.host} Default=YES MaxTime=INFINITE State=UP",
                "",
            ])
        )  # fmt: skip

    def start(self, timeout_s: float = 60.0) -> LocalSlurm:
        """Install if needed, write the config, start munged, slurmctld and slurmd, and wait
        until the node is idle; sets ``SLURM_CONF`` in this process.

        Raises:
            RuntimeError: a daemon did not come up within ``timeout_s`` (its log is quoted).
        """
        ensure_installed()
        self.write_config()
        m = self.root / "munge"
        subprocess.run(
            ["munged", "--force", f"--key-file={m}/munge.key", f"--socket={m}/munge.socket",
             f"--pid-file={m}/munged.pid", f"--log-file={m}/munged.log", f"--seed-file={m}/munged.seed"],
            check=True,
        )  # fmt: skip
        subprocess.run(["slurmctld", "-c", "-f", str(self.conf)], env=self.env, check=True)
        subprocess.run(["slurmd", "-c", "-f", str(self.conf), "-N", self.host], env=self.env, check=True)
        os.environ["SLURM_CONF"] = str(self.conf)
        deadline = time.monotonic() + timeout_s
        state = ""
        while time.monotonic() < deadline:
            out = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=self.env, capture_output=True, text=True)
            state = out.stdout.strip()
            if out.returncode == 0 and state.startswith("idle"):
                return self
            time.sleep(1)
        logs = "\n".join(
            f"--- {p.name}\n{p.read_text()[-2000:]}" for p in (self.root / "slurmctld.log", self.root / "slurmd.log")
            if p.exists()
        )  # fmt: skip
        self.stop()
        raise RuntimeError(f"the local SLURM did not come up in {timeout_s:.0f} s (node state {state!r})\n{logs}")

    def stop(self) -> None:
        """Cancel every job and end slurmd, slurmctld and munged (SIGTERM, then SIGKILL)."""
        if shutil.which("scancel"):
            subprocess.run(["scancel", "--user", _user()], env=self.env, capture_output=True, timeout=30)
        for pid_file in (self.root / "slurmd.pid", self.root / "slurmctld.pid", self.root / "munge" / "munged.pid"):
            _kill(pid_file)
        if os.environ.get("SLURM_CONF") == str(self.conf):
            del os.environ["SLURM_CONF"]

    def __enter__(self) -> LocalSlurm:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name


def _kill(pid_file: Path, wait_s: float = 10.0) -> None:
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("start", "stop"):
        print("usage: python tools/slurm_local.py start|stop DIR", file=sys.stderr)
        raise SystemExit(2)
    slurm = LocalSlurm(sys.argv[2])
    if sys.argv[1] == "start":
        slurm.start()
        print(f"export SLURM_CONF={slurm.conf}")
    else:
        slurm.stop()
