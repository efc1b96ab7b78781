"""Two Slurm "nodes" on this machine, for the multi-node tests: `MultiNodeCluster` makes them and tears them down.

Each node is a set of Linux namespaces held by one `sleep` process: its own network stack (one
veth, address 10.77.0.<i>/24, plus lo), its own hostname (UTS: node1, node2) and its own mount
table, where a private /etc/hosts names the nodes (so MASTER_ADDR=node1 resolves on every node and
nowhere else). The veths meet on a bridge inside a third, hub namespace: no address, route or
interface is added to the host's namespace, and the bridge exists only while the test runs.

Slurm (Debian's slurm-wlm 22.05, checked to work this way): one slurmctld on node1 and one
`slurmd -N <node>` per node, each inside its node's namespaces, all run in the foreground as
children of the test. They read their own slurm.conf from a temporary folder (SLURM_CONF; state,
spool, pid and log files there too, ports 6917/6918), so the single-node cluster of
tests/slurm_cluster.py (/etc/slurm/slurm.conf, host namespace) is never touched. munged is the
host's (tests/slurm_cluster.py starts it): its socket is a file, which every namespace reaches.
`sbatch`, `squeue`, `scontrol` for this cluster run on node1 (`cluster.run("node1", ...)`).

The filesystem is shared (the mount namespaces only swap /etc/hosts): the repository, the data and
run dirs are the same paths on both nodes, like a shared filesystem on a real cluster.

`close()` (always called by the fixture, also on failure) kills every process in the nodes'
namespaces (found by their /proc/<pid>/ns/net), then the holders; the namespaces, the veths and the
bridge go with them. The holders and daemons also die with the test process (PR_SET_PDEATHSIG).

    with MultiNodeCluster(tmp_path) as cluster:
        cluster.run("node1", "sbatch", "--nodes=2", ...)
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import slurm_cluster

SUBNET = "10.77.0"
PORTS = {"ctld": 6917, "slurmd": 6918}
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL this child when the test process dies, so nothing outlives a crashed test."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _netns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None


class MultiNodeCluster:
    """`nodes` Slurm nodes (node1..nodeN) in namespaces on this machine; a context manager."""

    def __init__(self, root: Path, nodes: int = 2, timeout: float = 60) -> None:
        if os.geteuid() != 0:
            raise slurm_cluster.SlurmSetupError("the multi-node test bed needs root (namespaces, a bridge, daemons)")
        slurm_cluster.check_installed()
        missing = [c for c in ("ip", "unshare", "nsenter", "hostname", "mount") if shutil.which(c) is None]
        if missing:
            raise slurm_cluster.SlurmSetupError(
                f"the multi-node test bed needs {', '.join(missing)} (iproute2, util-linux): `bash scripts/test.sh` "
                "installs them (apt-get install -y iproute2 util-linux)"
            )
        self.root = root
        self.names = [f"node{i}" for i in range(1, nodes + 1)]
        self.addrs = {name: f"{SUBNET}.{i}" for i, name in enumerate(self.names, 1)}
        self.holders: dict[str, subprocess.Popen] = {}
        self.daemons: list[subprocess.Popen] = []
        self.conf = root / "slurm.conf"
        try:
            self._start(timeout)
        except BaseException:
            self.close()
            raise

    # --- namespaces -------------------------------------------------------------------------

    def _hold(self, name: str, *flags: str) -> None:
        self.holders[name] = subprocess.Popen(["unshare", *flags, "sleep", "infinity"], preexec_fn=_die_with_parent)
        deadline = time.monotonic() + 10
        while _netns(self.holders[name].pid) in (None, _netns(os.getpid())):  # unshare has not exec'd yet
            if self.holders[name].poll() is not None or time.monotonic() > deadline:
                raise slurm_cluster.SlurmSetupError(f"unshare {' '.join(flags)} failed for {name}")
            time.sleep(0.05)

    def _enter(self, name: str) -> list[str]:
        return ["nsenter", "-t", str(self.holders[name].pid), "-n", "-u", "-m", "--"]

    def _net_setup(self) -> None:
        self._hold("hub", "--net")
        hub = ["nsenter", "-t", str(self.holders["hub"].pid), "-n", "--"]
        _check(*hub, "ip", "link", "add", "br0", "type", "bridge")
        _check(*hub, "ip", "link", "set", "br0", "up")
        hosts = self.root / "hosts"
        hosts.write_text("127.0.0.1 localhost\n" + "".join(f"{a} {n}\n" for n, a in self.addrs.items()))
        for name, addr in self.addrs.items():
            self._hold(name, "--net", "--uts", "--mount", "--propagation", "private")
            pid = str(self.holders[name].pid)
            _check(*hub, "ip", "link", "add", f"v{name}", "type", "veth", "peer", "name", "eth0", "netns", pid)
            _check(*hub, "ip", "link", "set", f"v{name}", "master", "br0", "up")
            inside = self._enter(name)
            _check(*inside, "ip", "addr", "add", f"{addr}/24", "dev", "eth0")
            _check(*inside, "ip", "link", "set", "eth0", "up")
            _check(*inside, "ip", "link", "set", "lo", "up")
            _check(*inside, "hostname", name)
            _check(*inside, "mount", "--bind", str(hosts), "/etc/hosts")

    # --- Slurm --------------------------------------------------------------------------------

    def slurm_conf(self) -> str:
        root = self.root
        hw = slurm_cluster.node_line("X").split(" ", 1)[1].replace(" State=UNKNOWN", "")  # CPUs, memory of this machine
        nodes = "".join(f"NodeName={n} NodeAddr={a} {hw} State=UNKNOWN\n" for n, a in self.addrs.items())
        return f"""\
# Written by tests/multinode.py: {len(self.names)} nodes in namespaces, for the multi-node tests.
ClusterName=vlpmulti
SlurmctldHost={self.names[0]}({self.addrs[self.names[0]]})
SlurmctldPort={PORTS["ctld"]}
SlurmdPort={PORTS["slurmd"]}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=15
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd-%n.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd-%n.log
{slurm_cluster.POLICY}{nodes}PartitionName=multi Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""

    def env(self, **extra: str) -> dict[str, str]:
        drop = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "MLFLOW_TRACKING_URI")
        env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("SLURM_")}
        env.update(SLURM_CONF=str(self.conf), DS_ACCELERATOR="cpu", HF_HUB_OFFLINE="1", **extra)
        return env

    def _daemon(self, node: str, *cmd: str) -> None:
        log = (self.root / f"{cmd[0]}-{node}.stderr").open("w")
        self.daemons.append(subprocess.Popen([*self._enter(node), *cmd], env=self.env(), stdout=log,
                                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                             preexec_fn=_die_with_parent))  # fmt: skip

    def _start(self, timeout: float) -> None:
        slurm_cluster.ensure_munge()
        self._net_setup()
        for d in ("state", *(f"spool/{n}" for n in self.names)):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        self.conf.write_text(self.slurm_conf())
        self._daemon(self.names[0], "slurmctld", "-D", "-i")
        self._wait(lambda: "UP" in self.run(self.names[0], "scontrol", "ping").stdout, timeout, "slurmctld")
        for name in self.names:
            self._daemon(name, "slurmd", "-D", "-N", name)
        self._wait(self.all_idle, timeout, "slurmd")

    def all_idle(self) -> bool:
        out = self.run(self.names[0], "sinfo", "-h", "-N", "-o", "%N %t").stdout.split()
        states = dict(zip(out[::2], out[1::2], strict=False))
        return all(states.get(n) == "idle" for n in self.names)

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            dead = [d.args for d in self.daemons if d.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise slurm_cluster.SlurmSetupError(f"{what} not ready (exited: {dead})\n{self.logs()}")
            time.sleep(0.5)

    def logs(self, lines: int = 30) -> str:
        out = []
        for path in sorted(self.root.glob("*.log")) + sorted(self.root.glob("*.stderr")):
            out.append(f"--- {path.name}\n" + "".join(path.read_text(errors="replace").splitlines(True)[-lines:]))
        return "\n".join(out)

    # --- use -----------------------------------------------------------------------------------

    def run(self, node: str, *cmd: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        """`cmd` on `node` (its network, hostname and /etc/hosts) with this cluster's SLURM_CONF."""
        kw.setdefault("env", self.env())
        return subprocess.run([*self._enter(node), *cmd], capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, **kw)  # fmt: skip

    def popen(self, node: str, *cmd: str, **kw) -> subprocess.Popen:
        kw.setdefault("env", self.env())
        return subprocess.Popen([*self._enter(node), *cmd], preexec_fn=_die_with_parent, **kw)

    def pids(self, node: str) -> list[int]:
        """Every process in `node`'s network namespace (daemons, job steps, ranks), its holder included."""
        target = _netns(self.holders[node].pid)
        return [int(p) for p in os.listdir("/proc") if p.isdigit() and target and _netns(int(p)) == target]

    def kill_ranks(self, node: str, pattern: str = r"pretrain/train\.py|finetune/") -> list[int]:
        """SIGKILL the training processes on `node` (a node dying under the job); returns their pids."""
        killed = []
        for pid in self.pids(node):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if re.search(pattern, cmdline) and "--check" not in cmdline:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        return killed

    def cut_link(self, node: str) -> None:
        """Take `node`'s veth off the bridge (down): its packets go nowhere, no connection is reset."""
        _check("nsenter", "-t", str(self.holders["hub"].pid), "-n", "--", "ip", "link", "set", f"v{node}", "down")

    def close(self) -> None:
        """Kill everything in the nodes' namespaces, then the holders: namespaces, veths and bridge go."""
        for proc in self.daemons:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.daemons:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        for name in self.names:
            if name in self.holders:
                for pid in self.pids(name):
                    if pid != self.holders[name].pid:
                        try:
                            os.kill(pid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
        for proc in self.holders.values():
            proc.kill()
            proc.wait(timeout=10)

    def __enter__(self) -> MultiNodeCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check(*cmd: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise slurm_cluster.SlurmSetupError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr}")


if __name__ == "__main__":
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as tmp, MultiNodeCluster(Path(tmp)) as cluster:
        print(cluster.run("node1", "sinfo", "-N").stdout)
        print(cluster.run("node1", "srun", "--nodes=2", "--ntasks-per-node=1", "hostname").stdout, file=sys.stderr)
