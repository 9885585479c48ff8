"""A real, throw-away, single-node Slurm cluster for tests.

``LocalSlurm`` installs the Debian packages it needs (when running as root),
writes its own ``slurm.conf`` into a scratch directory, starts ``munged``,
``slurmctld`` and ``slurmd`` as foreground child processes, and stops exactly
those processes again. Clients (``sbatch``, ``squeue``, Snakemake's slurm
executor) find the cluster through ``SLURM_CONF``; ``/etc/slurm/slurm.conf`` is
never written.

Typical use::

    with LocalSlurm() as cluster:
        run = cluster.run_snakemake(
            ["--executor", "slurm", "--workflow-profile", "profiles/slurm"],
            cwd=workdir, timeout=120)
        assert run.returncode == 0, run.output

Anything that makes the cluster impossible here (not root, packages missing
and not installable, daemons refusing to start) raises ``SlurmUnavailable``;
tests turn that into a skip with the given reason.

Pitfalls handled here (see shared/docs/local-slurm.md):

* Without accounting, ``sacct`` fails and Snakemake's slurm plugin can hang
  forever; ``run_snakemake`` always adds ``TEST_SNAKEMAKE_FLAGS``
  (``--slurm-status-command squeue`` and fast polling) and runs Snakemake in
  its own session under a hard timeout, killing the whole process group with
  SIGKILL when it expires. ``MinJobAge`` is kept >= 120 s so ``squeue`` still
  reports finished jobs.
* snakemake-executor-plugin-slurm-jobstep drops every SLURM_* variable except
  the job identity before its nested ``srun``, SLURM_CONF included, so that
  ``srun`` would look for /etc/slurm/slurm.conf. Instead of writing there, the
  cluster puts ``<scratch>/bin`` first on PATH (``submit_env``): wrappers for
  the Slurm client programs that set SLURM_CONF and exec the real program.
* Even with ``--seconds-between-status-checks 1`` the plugin backs off by
  10 s after every status check that sees no finished job (up to 180 s), so a
  failure or the end of a long job is noticed up to ~20-30 s late in tests;
  budget timeouts accordingly.
* The node has no GRES, so any ``--gpus`` request fails at once: a workflow
  run against this cluster must set its GPU count to 0 (``LocalSlurm.gpus``).
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

PACKAGES = ("munge", "slurmctld", "slurmd", "slurm-client")
CLIENT_PROGRAMS = ("srun", "sbatch", "squeue", "scancel", "sinfo", "scontrol", "sacct", "salloc",
                   "sstat")
REQUIRED_PROGRAMS = (
    "munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo",
    "scontrol", "srun", "setpriv",
)
DEFAULT_PORTS = (6817, 6818)  # SlurmctldPort, SlurmdPort

# Flags every test run of Snakemake's slurm executor needs on a cluster
# without accounting (pitfalls 1 and 2 in shared/docs/local-slurm.md).
TEST_SNAKEMAKE_FLAGS = (
    "--slurm-status-command", "squeue",
    "--slurm-init-seconds-before-status-checks", "1",
    "--seconds-between-status-checks", "1",
)

_SUBMITTED_RE = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+)")


class SlurmUnavailable(RuntimeError):
    """This machine cannot host a local Slurm; the message is the reason."""


# --------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------

def missing_programs() -> list[str]:
    return [p for p in REQUIRED_PROGRAMS if shutil.which(p) is None]


def ensure_installed(install: bool = True, timeout: float = 600) -> None:
    """Make sure munge and Slurm are installed, installing them with apt-get.

    Raises SlurmUnavailable when they are missing and cannot be installed.
    """
    if os.geteuid() != 0:
        raise SlurmUnavailable("a local Slurm needs root (daemons run as root and munge)")
    missing = missing_programs()
    if not missing:
        return
    if not install:
        raise SlurmUnavailable(f"missing programs: {', '.join(missing)}")
    if shutil.which("apt-get") is None:
        raise SlurmUnavailable(f"missing {', '.join(missing)} and no apt-get to install {' '.join(PACKAGES)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    steps = (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES],
    )
    for cmd in steps:
        try:
            proc = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                                  text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SlurmUnavailable(f"`{' '.join(cmd)}` failed: {exc}") from exc
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            raise SlurmUnavailable(f"`{' '.join(cmd)}` exited {proc.returncode}: {' | '.join(tail)}")
    missing = missing_programs()
    if missing:
        raise SlurmUnavailable(f"still missing after apt-get install: {', '.join(missing)}")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def _ephemeral_port(exclude: Iterable[int] = ()) -> int:
    exclude = set(exclude)
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        if port not in exclude:
            return port


def pick_ports(preferred: Sequence[int] = DEFAULT_PORTS) -> tuple[int, int]:
    """The Slurm default ports when free, otherwise free ephemeral ones."""
    chosen: list[int] = []
    for port in preferred:
        chosen.append(port if _port_free(port) and port not in chosen else _ephemeral_port(chosen))
    return chosen[0], chosen[1]


def mem_total_mb() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    raise SlurmUnavailable("cannot read MemTotal from /proc/meminfo")


def node_hardware() -> dict[str, str]:
    """CPU layout of this machine as Slurm sees it (``slurmd -C``)."""
    hw: dict[str, str] = {}
    try:
        out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, timeout=30).stdout
        first = out.splitlines()[0] if out else ""
        for item in first.split():
            key, _, value = item.partition("=")
            if key in ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore"):
                hw[key] = value
    except (OSError, subprocess.TimeoutExpired, IndexError):
        pass
    if "CPUs" not in hw:  # computed fallback: one socket, one thread per core
        n = os.cpu_count() or 1
        hw = {"CPUs": str(n), "Boards": "1", "SocketsPerBoard": "1",
              "CoresPerSocket": str(n), "ThreadsPerCore": "1"}
    return hw


def submitted_job_ids(log_text: str) -> dict[int, int]:
    """Map Snakemake job number -> Slurm job id, from a Snakemake log."""
    return {int(m.group(1)): int(m.group(2)) for m in _SUBMITTED_RE.finditer(log_text)}


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.2,
               what: str = "condition") -> object:
    """Poll ``predicate`` until it returns something truthy; TimeoutError otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --------------------------------------------------------------------------
# daemons
# --------------------------------------------------------------------------

@dataclasses.dataclass
class _Daemon:
    name: str
    proc: subprocess.Popen
    log: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10) -> None:
        """TERM this exact PID, wait, KILL on timeout."""
        if self.proc.poll() is not None:
            return
        try:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=timeout)
        except ProcessLookupError:
            pass


# --------------------------------------------------------------------------
# snakemake runs
# --------------------------------------------------------------------------

@dataclasses.dataclass
class SnakemakeRun:
    """Result of one Snakemake invocation."""
    args: list[str]
    returncode: int | None  # None when killed on timeout
    timed_out: bool
    seconds: float
    log_path: Path

    @property
    def output(self) -> str:
        """Combined stdout and stderr of the run."""
        return self.log_path.read_text(errors="replace")

    @property
    def slurm_job_ids(self) -> dict[int, int]:
        return submitted_job_ids(self.output)


class SnakemakeProcess:
    """A Snakemake started in its own session; ``wait`` enforces a hard timeout."""

    def __init__(self, args: list[str], cwd: Path, env: Mapping[str, str], log_path: Path):
        self.args = args
        self.log_path = log_path
        self.started = time.monotonic()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "wb") as log:
            # start_new_session=True is setsid(): own session and process group,
            # no controlling terminal; stdin from /dev/null (pitfall 5).
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "snakemake", *args], cwd=str(cwd), env=dict(env),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self) -> int | None:
        return self.proc.poll()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the whole process group (Snakemake may ignore SIGTERM)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def wait(self, timeout: float) -> SnakemakeRun:
        remaining = timeout - (time.monotonic() - self.started)
        timed_out = False
        try:
            self.proc.wait(timeout=max(remaining, 0.01))
        except subprocess.TimeoutExpired:
            timed_out = True
            self.kill()
        # A finished snakemake leaves no children behind in its group, but be sure.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return SnakemakeRun(self.args, None if timed_out else self.proc.returncode, timed_out,
                            time.monotonic() - self.started, self.log_path)


# --------------------------------------------------------------------------
# the cluster
# --------------------------------------------------------------------------

class LocalSlurm:
    """A single-node Slurm (munged + slurmctld + slurmd) living in a scratch dir.

    Parameters
    ----------
    partitions: partition names, all on the one node; the first is the default.
    scratch: directory for config, state, spool and logs (a new temp dir if None;
        a temp dir is removed on stop, a given one is kept).
    min_job_age: seconds finished jobs stay visible to ``squeue`` (>= 120).
    install: apt-get install missing packages (root only).
    start_timeout: seconds to wait for the node to become idle.
    """

    gpus = 0  # the node has no GRES: workflows must request gpu=0 here

    def __init__(self, partitions: Sequence[str] = ("debug",), scratch: str | Path | None = None,
                 min_job_age: int = 600, install: bool = True, start_timeout: float = 60):
        if min_job_age < 120:
            raise ValueError("min_job_age must be >= 120 so squeue can report finished jobs")
        if not partitions:
            raise ValueError("need at least one partition")
        self.partitions = list(dict.fromkeys(partitions))
        self.default_partition = self.partitions[0]
        self.min_job_age = min_job_age
        self.install = install
        self.start_timeout = start_timeout
        self._given_scratch = Path(scratch) if scratch is not None else None
        self.scratch: Path | None = None
        self.conf_path: Path | None = None
        self.node = socket.gethostname().split(".")[0]
        self.ctld_port = self.slurmd_port = 0
        self.real_memory_mb = 0
        self.cpus = 0
        self.startup_seconds: float | None = None  # start() wall time, install included
        self.install_seconds: float | None = None  # of which checking/installing packages
        self._daemons: list[_Daemon] = []
        self._munge_socket: Path | None = None

    # -- context manager ---------------------------------------------------
    def __enter__(self) -> "LocalSlurm":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> "LocalSlurm":
        if self._daemons:
            raise RuntimeError("cluster already started")
        t0 = time.monotonic()
        ensure_installed(self.install)
        self.install_seconds = time.monotonic() - t0
        try:
            self._prepare_scratch()
            self._write_conf()
            self._write_client_wrappers()
            self._start_munged()
            self._start_slurm()
            self._wait_idle()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def stop(self) -> None:
        """Cancel remaining jobs, then stop exactly the daemons this object started."""
        if self._daemons and self._daemon("slurmctld") and self._daemon("slurmctld").alive():
            try:
                ids = self.squeue_job_ids(states="PENDING,RUNNING,CONFIGURING,COMPLETING,SUSPENDED")
                for job_id in ids:
                    self.scancel(job_id)
                if ids:  # let slurmd/slurmstepd tear the job processes down
                    wait_until(lambda: not self.squeue_job_ids(
                        states="PENDING,RUNNING,CONFIGURING,COMPLETING,SUSPENDED"), timeout=20,
                        what="cancelled jobs to finish")
            except (subprocess.SubprocessError, OSError, TimeoutError):
                pass
        # reverse start order: slurmd, slurmctld, munged
        for daemon in reversed(self._daemons):
            daemon.stop()
        self._daemons.clear()
        if self.scratch is not None and self._given_scratch is None:
            shutil.rmtree(self.scratch, ignore_errors=True)
            self.scratch = None

    @property
    def running(self) -> bool:
        return bool(self._daemons) and all(d.alive() for d in self._daemons)

    @property
    def pids(self) -> dict[str, int]:
        """PIDs of the daemons this object started."""
        return {d.name: d.proc.pid for d in self._daemons}

    # -- setup steps -------------------------------------------------------
    def _prepare_scratch(self) -> None:
        if self._given_scratch is not None:
            self.scratch = self._given_scratch
            self.scratch.mkdir(parents=True, exist_ok=True)
        else:
            self.scratch = Path(tempfile.mkdtemp(prefix="local-slurm-"))
        # munged (as the munge user) must be able to traverse to its own dir
        os.chmod(self.scratch, 0o755)
        for sub in ("state", "spool", "run", "log", "bin"):
            (self.scratch / sub).mkdir(exist_ok=True)

    def _write_client_wrappers(self) -> None:
        """<scratch>/bin/<client>: set SLURM_CONF, exec the real client (see module doc)."""
        assert self.scratch is not None and self.conf_path is not None
        for name in CLIENT_PROGRAMS:
            real = shutil.which(name)
            if real is None:
                continue
            wrapper = self.scratch / "bin" / name
            wrapper.write_text(f"#!/bin/sh\nSLURM_CONF={shlex.quote(str(self.conf_path))}\n"
                               f"export SLURM_CONF\nexec {shlex.quote(real)} \"$@\"\n")
            wrapper.chmod(0o755)

    def _write_conf(self) -> None:
        assert self.scratch is not None
        self.ctld_port, self.slurmd_port = pick_ports()
        hw = node_hardware()
        self.cpus = int(hw["CPUs"])
        self.real_memory_mb = int(mem_total_mb() * 0.9)
        self._munge_socket = self.scratch / "munge" / "munge.socket"
        s = self.scratch
        node_line = " ".join(
            [f"NodeName={self.node}", "NodeAddr=127.0.0.1"]
            + [f"{k}={hw[k]}" for k in ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket",
                                         "ThreadsPerCore")]
            + [f"RealMemory={self.real_memory_mb}", "State=UNKNOWN"])
        partition_lines = [
            f"PartitionName={name} Nodes={self.node} Default={'YES' if i == 0 else 'NO'} "
            "MaxTime=INFINITE State=UP"
            for i, name in enumerate(self.partitions)]
        lines = [
            "# written by tests/cluster/slurm.py (LocalSlurm); throw-away test cluster",
            "ClusterName=local",
            f"SlurmctldHost={self.node}(127.0.0.1)",
            f"SlurmctldPort={self.ctld_port}",
            f"SlurmdPort={self.slurmd_port}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self._munge_socket}",
            "MpiDefault=none",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "SchedulerType=sched/backfill",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "JobCompType=jobcomp/none",
            "MailProg=/bin/true",
            "ReturnToService=2",
            f"MinJobAge={self.min_job_age}",
            "KillWait=5",
            "InactiveLimit=0",
            f"StateSaveLocation={s / 'state'}",
            f"SlurmdSpoolDir={s / 'spool'}",
            f"SlurmctldPidFile={s / 'run' / 'slurmctld.pid'}",
            f"SlurmdPidFile={s / 'run' / 'slurmd.pid'}",
            f"SlurmctldLogFile={s / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={s / 'log' / 'slurmd.log'}",
            node_line,
            *partition_lines,
        ]
        self.conf_path = s / "slurm.conf"
        self.conf_path.write_text("\n".join(lines) + "\n")

    def _spawn(self, name: str, cmd: list[str]) -> _Daemon:
        assert self.scratch is not None
        log = self.scratch / "log" / f"{name}.out"
        with open(log, "wb") as fh:
            proc = subprocess.Popen(cmd, env=self.submit_env(), stdin=subprocess.DEVNULL,
                                    stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        daemon = _Daemon(name, proc, log)
        self._daemons.append(daemon)
        return daemon

    def _daemon(self, name: str) -> _Daemon | None:
        return next((d for d in self._daemons if d.name == name), None)

    def _check_alive(self) -> None:
        for d in self._daemons:
            if not d.alive():
                extra = ""
                if d.name in ("slurmctld", "slurmd") and self.scratch is not None:
                    extra = "\n" + _tail(self.scratch / "log" / f"{d.name}.log")
                raise SlurmUnavailable(
                    f"{d.name} exited with {d.proc.returncode}:\n{_tail(d.log)}{extra}")

    def _start_munged(self) -> None:
        assert self.scratch is not None and self._munge_socket is not None
        try:
            munge_user = pwd.getpwnam("munge")
        except KeyError as exc:
            raise SlurmUnavailable("no 'munge' user (is the munge package installed?)") from exc
        mdir = self._munge_socket.parent
        mdir.mkdir(exist_ok=True)
        # munged wants its socket dir owned by munge and searchable by every client
        os.chmod(mdir, 0o755)
        os.chown(mdir, munge_user.pw_uid, munge_user.pw_gid)
        key = Path("/etc/munge/munge.key")
        if not key.exists():  # the package normally creates one; make a private key otherwise
            key = mdir / "munge.key"
            key.write_bytes(os.urandom(1024))
            os.chmod(key, 0o600)
            os.chown(key, munge_user.pw_uid, munge_user.pw_gid)
        self._spawn("munged", [
            "setpriv", f"--reuid={munge_user.pw_uid}", f"--regid={munge_user.pw_gid}",
            "--clear-groups",
            "munged", "--foreground", f"--socket={self._munge_socket}", f"--key-file={key}",
            f"--pid-file={mdir / 'munged.pid'}", f"--seed-file={mdir / 'munged.seed'}",
            f"--log-file={mdir / 'munged.log'}",
        ])

        def ready() -> bool:
            self._check_alive()
            return self._munge_socket.exists()

        wait_until(ready, timeout=15, interval=0.05, what="munged socket")

    def _start_slurm(self) -> None:
        assert self.conf_path is not None
        self._spawn("slurmctld", ["slurmctld", "-D", "-c", "-f", str(self.conf_path)])

        def ctld_up() -> bool:
            self._check_alive()
            return self._client(["scontrol", "ping"], check=False).returncode == 0

        wait_until(ctld_up, timeout=self.start_timeout, interval=0.1, what="slurmctld to answer")
        self._spawn("slurmd", ["slurmd", "-D", "-f", str(self.conf_path), "-N", self.node])

    def _wait_idle(self) -> None:
        def idle() -> bool:
            self._check_alive()
            states = self._client(["sinfo", "-h", "-N", "-n", self.node, "-o", "%T"],
                                  check=False).stdout.split()
            return bool(states) and all(s.rstrip("*~#$@") == "idle" for s in states)

        try:
            wait_until(idle, timeout=self.start_timeout, interval=0.1, what=f"node {self.node} idle")
        except TimeoutError as exc:
            raise SlurmUnavailable(f"{exc}; slurmd log:\n{self.log_tail('slurmd')}") from exc

    # -- client side -------------------------------------------------------
    def submit_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment for Slurm clients and Snakemake: SLURM_CONF points here and
        the client wrappers come first on PATH.

        Inherited SLURM_* variables (from an enclosing real cluster job) are dropped.
        """
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        if self.conf_path is not None:
            env["SLURM_CONF"] = str(self.conf_path)
        if self.scratch is not None:
            env["PATH"] = os.pathsep.join([str(self.scratch / "bin"), env.get("PATH", os.defpath)])
        if extra:
            env.update(extra)
        return env

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf_path)} if self.conf_path else {}

    def _client(self, cmd: list[str], check: bool = True, timeout: float = 30
                ) -> subprocess.CompletedProcess:
        proc = subprocess.run(cmd, env=self.submit_env(), stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise subprocess.CalledProcessError(proc.returncode, cmd, proc.stdout, proc.stderr)
        return proc

    def squeue_jobs(self, states: str = "all") -> list[dict[str, str]]:
        """Jobs known to slurmctld (finished ones too, for MinJobAge seconds).

        Each job is a dict with id, name, state, partition, comment.
        """
        out = self._client(["squeue", "-h", "-t", states, "-o", "%i|%j|%T|%P|%k"]).stdout
        jobs = []
        for line in out.splitlines():
            parts = line.split("|", 4)
            if len(parts) == 5:
                jobs.append(dict(zip(("id", "name", "state", "partition", "comment"), parts)))
        return jobs

    def squeue_job_ids(self, states: str = "all") -> list[int]:
        """Ids of jobs in the given states (squeue ``-t`` syntax; default: all)."""
        return list(self.jobs_by_id(states))

    def jobs_by_id(self, states: str = "all") -> dict[int, dict[str, str]]:
        """squeue_jobs keyed by their numeric job id."""
        return {int(j["id"]): j for j in self.squeue_jobs(states) if j["id"].isdigit()}

    def scancel(self, job_id: int | str, signal_name: str | None = None) -> None:
        cmd = ["scancel"]
        if signal_name:
            cmd += ["--signal", signal_name]
        self._client([*cmd, str(job_id)])

    def sinfo(self) -> str:
        return self._client(["sinfo"]).stdout

    def log_tail(self, daemon: str, lines: int = 30) -> str:
        """Last lines of slurmctld.log / slurmd.log / munged.log."""
        if self.scratch is None:
            return ""
        path = (self.scratch / "munge" / "munged.log" if daemon == "munged"
                else self.scratch / "log" / f"{daemon}.log")
        return _tail(path, lines)

    # -- snakemake ---------------------------------------------------------
    @staticmethod
    def _with_test_flags(args: Sequence[str]) -> list[str]:
        args = [str(a) for a in args]
        for i in range(0, len(TEST_SNAKEMAKE_FLAGS), 2):
            flag, value = TEST_SNAKEMAKE_FLAGS[i], TEST_SNAKEMAKE_FLAGS[i + 1]
            if not any(a == flag or a.startswith(flag + "=") for a in args):
                args += [flag, value]
        return args

    def start_snakemake(self, args: Sequence[str], cwd: str | Path, log_path: str | Path | None = None,
                        extra_env: Mapping[str, str] | None = None) -> SnakemakeProcess:
        """Start ``python -m snakemake ARGS`` in the background (own session, stdin /dev/null).

        ``TEST_SNAKEMAKE_FLAGS`` are appended unless given. Output goes to ``log_path``
        (default: ``cwd/snakemake-<n>.log``).
        """
        cwd = Path(cwd)
        if log_path is None:
            n = 1
            while (cwd / f"snakemake-{n}.log").exists():
                n += 1
            log_path = cwd / f"snakemake-{n}.log"
        return SnakemakeProcess(self._with_test_flags(args), cwd, self.submit_env(extra_env),
                                Path(log_path))

    def run_snakemake(self, args: Sequence[str], cwd: str | Path, timeout: float = 300,
                      log_path: str | Path | None = None,
                      extra_env: Mapping[str, str] | None = None) -> SnakemakeRun:
        """Run Snakemake to completion; SIGKILL its process group after ``timeout`` s."""
        return self.start_snakemake(args, cwd, log_path, extra_env).wait(timeout)
