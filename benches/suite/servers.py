"""Starting and stopping the servers the suite measures: torchwire, the gRPC floor
(`torchwire-bench floor`), the Python grpcio peer and TorchServe; setting up the peers; waiting until a
server answers; and what the suite reads about a running process (RSS, children, CPU affinity).

Every server runs in its own process group, pinned to the server core, logging to a file in the run's
temp folder; `stop_all()` (also registered at exit and on signals) kills every group still running.
"""
from __future__ import annotations

import glob
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from . import wire
from .context import Context
from .plan import PEER_TAB, PEER_TEXT, ROOT, SERVER_CPU, TAB_MODEL, TEXT_MODEL, StepError


class Server:
    """A server process in its own process group, logging to a file; stop() kills the whole group."""

    live: list["Server"] = []

    def __init__(self, name: str, cmd: list[str], log: Path, env: dict | None = None, cwd: Path | None = None):
        self.name, self.cmd, self.log = name, cmd, log
        self.logf = open(log, "ab")
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdout=self.logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, cwd=cwd, start_new_session=True)
        self.pid = self.proc.pid
        self.stop_hooks: list = []
        Server.live.append(self)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, n: int = 15) -> str:
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def rss(self, tree: bool = False) -> dict:
        pids = process_tree(self.pid) if tree else [self.pid]
        procs = [{"pid": p, "cmd": proc_name(p), "rss_kb": rss_kb(p), "cpus": cpus_allowed(p)} for p in pids]
        return {"rss_kb": sum(p["rss_kb"] for p in procs), "processes": procs}

    def stop(self) -> None:
        for hook in self.stop_hooks:
            try:
                hook()
            except Exception as e:  # noqa: BLE001 - the group kill below still runs
                print(f"  warning: stopping {self.name}: {e}", flush=True)
        self.stop_hooks = []
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=wait)
                # the leader is gone; give the rest of the group the same signal once more
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                break
            except subprocess.TimeoutExpired:
                continue
        self.logf.close()
        if self in Server.live:
            Server.live.remove(self)


def stop_all() -> None:
    for s in list(Server.live):
        s.stop()


# ---------------------------------------------------------------------------------------------
# Process facts

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def process_tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for f in glob.glob(f"/proc/{p}/task/*/children"):
            try:
                todo.extend(int(c) for c in Path(f).read_text().split())
            except OSError:
                pass
    return out


def cpus_allowed(pid: int) -> str | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def proc_name(pid: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        return " ".join(c.decode(errors="replace") for c in cmd[:3])[:120]
    except OSError:
        return "?"


# ---------------------------------------------------------------------------------------------
# Waiting for readiness

def wait_grpc(server: Server, port: int, timeout: float, accept_error: bool = False) -> float:
    """Seconds from exec to the first SERVING health answer (or any gRPC answer with accept_error)."""
    deadline = server.t0 + timeout
    while time.perf_counter() < deadline:
        st = wire.health_status(port)
        if st == 1 or (accept_error and st is not None):
            return time.perf_counter() - server.t0
        if not server.alive():
            raise StepError(f"{server.name} exited (rc {server.proc.returncode}) before serving; log tail:\n{server.tail()}")
        time.sleep(0.002 if st is None else 0.005)
    raise StepError(f"{server.name} not serving after {timeout:.0f} s; log tail:\n{server.tail()}")


def wait_http(server: Server, url: str, want: str, timeout: float) -> float:
    deadline = server.t0 + timeout
    while time.perf_counter() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if want in r.read().decode(errors="replace"):
                    return time.perf_counter() - server.t0
        except (OSError, urllib.error.URLError):
            pass
        if not server.alive():
            raise StepError(f"{server.name} exited (rc {server.proc.returncode}) before healthy; log tail:\n{server.tail()}")
        time.sleep(0.02)
    raise StepError(f"{server.name}: {url} not {want!r} after {timeout:.0f} s; log tail:\n{server.tail()}")


# ---------------------------------------------------------------------------------------------
# torchwire and the floor

def start_torchwire(ctx: Context, label: str, extra: list[str] | None = None) -> tuple[Server, int, float]:
    """`torchwire serve` on the bundled models, CPU only, one intra-op thread; (server, port, cold start s)."""
    port = free_port()
    cmd = ctx.taskset(SERVER_CPU) + [str(ctx.bin), "serve", "--model-dir", str(ROOT / "models"),
                                     "--grpc-addr", f"127.0.0.1:{port}", "--metrics-addr", "off", "--cpu-only",
                                     "--intra-op-threads", "1", "--log-level", "warn"] + (extra or [])
    s = Server(label, cmd, ctx.tmp / f"{label}.log")
    ctx.record_server_cmd(label, s.cmd)
    return s, port, wait_grpc(s, port, 60)


def start_floor(ctx: Context) -> tuple[Server, int]:
    """`torchwire-bench floor`: it has no health service, so any gRPC answer means it is up."""
    port = free_port()
    cmd = ctx.taskset(SERVER_CPU) + [str(ctx.bench_bin), "floor", "--grpc-addr", f"127.0.0.1:{port}"]
    s = Server("floor", cmd, ctx.tmp / "floor.log")
    ctx.record_server_cmd("floor", s.cmd)
    wait_grpc(s, port, 30, accept_error=True)
    return s, port


# ---------------------------------------------------------------------------------------------
# Peers

def find_peers() -> Path:
    """The peers folder (with its setup.sh): $TORCHWIRE_PEERS_DIR, else shared/peers inside or beside
    the checkout. No machine-specific path is assumed."""
    env = os.environ.get("TORCHWIRE_PEERS_DIR")
    candidates = [Path(env)] if env else [ROOT / "shared/peers", ROOT.parent / "shared/peers"]
    for cand in candidates:
        if (cand / "setup.sh").is_file():
            return cand.resolve()
    looked = ", ".join(str(c) for c in candidates)
    raise StepError(f"peers folder not found (no setup.sh in {looked}): set TORCHWIRE_PEERS_DIR to the folder "
                    "holding the peers' setup.sh, or leave the peers out with --only raw,floor,torchwire")


def setup_peers(ctx: Context) -> None:
    """Runs the peers' own set-up (idempotent) into .venv-peers, against the project venv's torch."""
    ctx.peers_src = find_peers()
    site = glob.glob(str(ROOT / ".venv/lib/python3*/site-packages"))
    if not site:
        raise StepError(".venv has no site-packages: run `make setup`")
    ctx.log(f"peers: {ctx.peers_src}/setup.sh (idempotent)")
    ctx.run_cmd("peers setup", ["bash", ctx.peers_src / "setup.sh", site[0], ctx.peers_venv], timeout=1800, cwd=ROOT)


def start_python(ctx: Context, label: str) -> tuple[Server, int, float]:
    """The Python grpcio + torch peer on both models; (server, port, cold start s)."""
    py = ctx.peers_venv / "python-grpc/bin/python"
    env = dict(os.environ, PYTHONPATH=str(ctx.peers_venv / "python-grpc"))
    port = free_port()
    cmd = ctx.taskset(SERVER_CPU) + [
        str(py), str(ctx.peers_src / "python-grpc/server.py"), "--port", str(port), "--torch-threads", "1",
        "--workers", "4", "--tabular", str(ROOT / "models" / TAB_MODEL / "1" / "model.pt"), "--tabular-name", PEER_TAB,
        "--features", str(ctx.tab_features), "--text", str(ROOT / "models" / TEXT_MODEL / "1" / "model.pt"),
        "--text-name", PEER_TEXT, "--tokenizer", str(ROOT / "models" / TEXT_MODEL / "tokenizer.json")]
    s = Server(label, cmd, ctx.tmp / f"{label}.log", env=env)
    ctx.record_server_cmd(label, s.cmd, f"PYTHONPATH={env['PYTHONPATH']}")
    return s, port, wait_grpc(s, port, 120)


def torchserve_store(ctx: Context) -> Path:
    """The model store with both models archived (once per run)."""
    store = ctx.tmp / "model-store"
    if (store / "sentiment.mar").exists():
        return store
    store.mkdir(exist_ok=True)
    arch = ctx.peers_venv / "torchserve/bin/torch-model-archiver"
    h = ctx.peers_src / "torchserve/handlers"
    ctx.log("TorchServe: archiving the models (torch-model-archiver)")
    ctx.run_cmd("torchserve archive", [arch, "--model-name", PEER_TAB, "--version", "1.0", "--serialized-file",
                                       ROOT / "models" / TAB_MODEL / "1" / "model.pt", "--handler", h / "mlp_handler.py",
                                       "--export-path", store], timeout=300)
    ctx.run_cmd("torchserve archive", [arch, "--model-name", PEER_TEXT, "--version", "1.0", "--serialized-file",
                                       ROOT / "models" / TEXT_MODEL / "1" / "model.pt", "--handler", h / "text_handler.py",
                                       "--extra-files", ROOT / "models" / TEXT_MODEL / "tokenizer.json",
                                       "--export-path", store], timeout=300)
    return store


def start_torchserve(ctx: Context, label: str, config_name: str) -> tuple[Server, dict, float]:
    """TorchServe with the peers' config (its ports moved to free ones); (server, ports, cold start s)."""
    store = torchserve_store(ctx)
    ports = {p: free_port() for p in (8080, 8081, 8082, 7070, 7071)}
    text = (ctx.peers_src / "torchserve" / config_name).read_text().replace("MODEL_STORE", str(store))
    text = re.sub(r"(?<=[:=])(8080|8081|8082|7070|7071)\b", lambda m: str(ports[int(m.group(1))]), text)
    conf = ctx.tmp / f"{label}.properties"
    conf.write_text(text)
    logs = ctx.tmp / f"{label}-logs"
    logs.mkdir(exist_ok=True)
    ts = ctx.peers_venv / "torchserve/bin/torchserve"
    env = dict(os.environ, LOG_LOCATION=str(logs), METRICS_LOCATION=str(logs), OMP_NUM_THREADS="1")
    cmd = ctx.taskset(SERVER_CPU) + [str(ts), "--start", "--foreground", "--ncs", "--ts-config", str(conf),
                                     "--model-store", str(store), "--disable-token-auth"]
    s = Server(label, cmd, ctx.tmp / f"{label}.log", env=env, cwd=ctx.tmp)
    ctx.record_server_cmd(label, s.cmd, f"LOG_LOCATION={logs} METRICS_LOCATION={logs} OMP_NUM_THREADS=1")

    def ts_stop() -> None:
        subprocess.run([str(ts), "--stop"], env=env, cwd=ctx.tmp, capture_output=True, timeout=60)
        for _ in range(100):  # --stop returns before the JVM is gone
            if not s.alive():
                break
            time.sleep(0.1)
    s.stop_hooks.append(ts_stop)
    return s, ports, wait_http(s, f"http://127.0.0.1:{ports[8080]}/ping", "Healthy", 180)
