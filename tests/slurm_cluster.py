"""A real single-node Slurm on this machine, for the tests: `ensure_cluster()` makes one, idempotently.

Debian's `slurm-wlm` (22.05) + `munge`, run as root, no accounting (sacct does not work; poll
squeue/scontrol instead). What it does, each step skipped when already done:

1. check that `sbatch`, `slurmctld`, `slurmd` and `munged` exist (scripts/test.sh installs them;
   a missing install is an error, never a skip);
2. write /etc/munge/munge.key (owner munge, mode 400) if absent and start munged as munge;
3. write /etc/slurm/slurm.conf for this host (the node line from `slurmd -C`, so its CPUs and
   memory match what slurmd reports) and restart the daemons when it changed; a slurm.conf
   that this module did not write (a real cluster's) is an error, never overwritten;
4. start slurmctld and slurmd if not running, and wait until the node takes jobs (resuming it
   when a previous daemon left it down).

The daemons are left running when the tests end: starting them costs seconds, keeping them
costs nothing, and a second test session reuses them. `stop_cluster()` ends them.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

MUNGE_KEY = Path("/etc/munge/munge.key")
MUNGE_SOCKET_DIR = Path("/run/munge")
SLURM_CONF = Path("/etc/slurm/slurm.conf")
PIDFILES = {"slurmctld": Path("/run/slurmctld.pid"), "slurmd": Path("/run/slurmd.pid")}
LOG_DIR = Path("/var/log/slurm")
CONF_MARKER = "# Written by tests/slurm_cluster.py"
COMMANDS = ("sbatch", "srun", "squeue", "scontrol", "sinfo", "slurmctld", "slurmd", "munged", "munge")
INSTALL_HINT = (
    "Slurm is not installed: the Slurm tests need slurm-wlm and munge. `bash scripts/test.sh` installs "
    "them (as root: apt-get install -y --no-install-recommends slurm-wlm munge)."
)


class SlurmSetupError(RuntimeError):
    pass


def _run(*cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise SlurmSetupError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
    return proc


def _daemon(*cmd: str) -> None:
    """Start a self-daemonising program detached from the caller's terminal and pipes."""
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True, timeout=30, start_new_session=True)  # fmt: skip
    if proc.returncode != 0:
        raise SlurmSetupError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr}")


def _pid_alive(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text().split()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return None
    return pid


def check_installed() -> None:
    missing = [c for c in COMMANDS if shutil.which(c) is None and not Path("/usr/sbin", c).exists()]
    if missing:
        raise SlurmSetupError(f"{INSTALL_HINT} Missing: {', '.join(missing)}")


def ensure_munge() -> None:
    """A key owned by munge (mode 400) and a running munged that can encode and decode."""
    munge = pwd.getpwnam("munge")
    if not MUNGE_KEY.exists():
        MUNGE_KEY.parent.mkdir(mode=0o700, exist_ok=True)
        MUNGE_KEY.write_bytes(os.urandom(1024))
    os.chown(MUNGE_KEY.parent, munge.pw_uid, munge.pw_gid)
    os.chown(MUNGE_KEY, munge.pw_uid, munge.pw_gid)
    MUNGE_KEY.chmod(0o400)
    if _munge_works():
        return
    MUNGE_SOCKET_DIR.mkdir(mode=0o755, exist_ok=True)
    os.chown(MUNGE_SOCKET_DIR, munge.pw_uid, munge.pw_gid)
    _daemon("runuser", "-u", "munge", "--", "/usr/sbin/munged")
    _wait(_munge_works, 15, "munged did not start")


def _munge_works() -> bool:
    try:
        cred = _run("munge", "-n", check=False)
        return (
            cred.returncode == 0
            and subprocess.run(["unmunge"], input=cred.stdout, capture_output=True, text=True, timeout=10).returncode
            == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


def node_line(host: str) -> str:
    """This machine's NodeName line: slurmd's own view of CPUs/sockets/cores, memory with headroom."""
    hw = _run("slurmd", "-C").stdout.splitlines()[0]
    fields = dict(kv.split("=", 1) for kv in hw.split() if "=" in kv)
    fields["NodeName"] = host
    fields["RealMemory"] = str(int(int(fields.get("RealMemory", "1024")) * 0.9))  # under what slurmd measures
    keys = ("NodeName", "CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore", "RealMemory")
    return " ".join(f"{k}={fields[k]}" for k in keys if k in fields) + " State=UNKNOWN"


# The scheduling and process settings both test clusters use (tests/multinode.py too).
POLICY = """\
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# Look at pending jobs every few seconds (default 60 s), so a requeued job starts soon after its BeginTime.
SchedulerParameters=sched_interval=5,bf_interval=5
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
JobRequeue=1
KillWait=10
MinJobAge=600
InactiveLimit=0
"""


def slurm_conf(host: str) -> str:
    return f"""\
{CONF_MARKER}: a single-node cluster for the Slurm tests (no accounting).
ClusterName=vlp
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# A requeued job waits cred_expire + 1 s before it may start again (default 120 s); 15 s keeps
# the preemption test short. Production clusters keep their own value.
AuthInfo=cred_expire=15
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile={PIDFILES["slurmctld"]}
SlurmdPidFile={PIDFILES["slurmd"]}
SlurmctldLogFile={LOG_DIR}/slurmctld.log
SlurmdLogFile={LOG_DIR}/slurmd.log
{POLICY}{node_line(host)}
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def stop_cluster() -> None:
    """End slurmd and slurmctld (munged keeps running: other tools may use it)."""
    for name in ("slurmd", "slurmctld"):
        pid = _pid_alive(PIDFILES[name])
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            _wait(lambda p=PIDFILES[name]: _pid_alive(p) is None, 30, f"{name} did not stop")


def _node_state(host: str) -> str:
    proc = _run("sinfo", "-h", "-N", "-n", host, "-o", "%t", check=False)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def _wait(ready, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise SlurmSetupError(message)
        time.sleep(0.5)


def _log_tail(daemon: str) -> str:
    path = LOG_DIR / f"{daemon}.log"
    return f"{path}:\n" + "".join(path.read_text().splitlines(keepends=True)[-20:]) if path.exists() else ""


def ensure_cluster(timeout: float = 90) -> str:
    """A working single-node Slurm; returns the node name. Safe to call again (it reuses what runs)."""
    if os.geteuid() != 0:
        raise SlurmSetupError("the single-node Slurm for the tests needs root (daemons, /etc/slurm, /etc/munge)")
    check_installed()
    ensure_munge()
    host = socket.gethostname()
    conf = slurm_conf(host)
    if SLURM_CONF.exists() and not SLURM_CONF.read_text().startswith(CONF_MARKER):
        raise SlurmSetupError(
            f"{SLURM_CONF} exists and was not written by {__file__}: this looks like a real "
            "cluster, whose configuration the tests will not overwrite. Run them elsewhere."
        )
    if not SLURM_CONF.exists() or SLURM_CONF.read_text() != conf:
        stop_cluster()
        SLURM_CONF.parent.mkdir(parents=True, exist_ok=True)
        SLURM_CONF.write_text(conf)
    for d in (Path("/var/spool/slurmctld"), Path("/var/spool/slurmd"), LOG_DIR):
        d.mkdir(parents=True, exist_ok=True)
    if _pid_alive(PIDFILES["slurmctld"]) is None:
        _daemon("slurmctld")
    _wait(
        lambda: "UP" in _run("scontrol", "ping", check=False).stdout,
        timeout,
        f"slurmctld did not answer\n{_log_tail('slurmctld')}",
    )
    if _pid_alive(PIDFILES["slurmd"]) is None:
        _daemon("slurmd")
    deadline = time.monotonic() + timeout
    while not re.match(r"^(idle|mix|alloc|comp)$", state := _node_state(host)):
        if re.match(r"^(down|drain|drng|fail)", state):  # left down by an earlier daemon: take it back
            _run("scontrol", "update", f"nodename={host}", "state=resume", check=False)
        if time.monotonic() > deadline:
            raise SlurmSetupError(f"node {host} is {state!r}, not idle, after {timeout:.0f} s\n{_log_tail('slurmd')}")
        time.sleep(0.5)
    return host


if __name__ == "__main__":
    print(f"single-node Slurm up on {ensure_cluster()}")
