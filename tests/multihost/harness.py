"""Separate hosts on one machine: Linux network namespaces joined by veth pairs, one folder each (issue 22).

    operator (this process, root namespace) --veth--+
    host 1 "web"     PostgreSQL, gunicorn, control worker, beat --veth--+-- bridge (namespace "lan")
    host 2 "broker"  Redis --veth--+                                    |   198.18.N.0/24
    host 3 "cpu"     cpu worker --veth--------------------------------+
    host 4 "sandbox" sandbox worker --veth-- host 2 only (198.19.N.4 peer 198.19.N.2)

Host 4's one link ends in host 2, which forwards nothing: it reaches the broker and no other
address, whatever routes it adds. Every process is started with `ip netns exec` inside its own
mount and UTS namespace: its own hostname, a private /tmp, and an empty tmpfs over every other
host's folder (and the checkout's `.data/`), so no host can read another's files by path.

Names carry this process's pid (`symh-<pid>-<token>-<host>`); a run whose pid is gone is swept
before the next starts, so namespaces left by a killed run do not pile up.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from apps.core.devservices import REPO_ROOT
from apps.core.stack import read_procfile

PREFIX = "symh"
PG_PORT = 5432
REDIS_PORT = 6379
WEB_PORT = 8000
S3_PORT = 9000
# Not /tmp: every host gets a private /tmp. A short path: PostgreSQL's socket lives in its data dir.
RUN_PARENT = Path("/var/tmp") if Path("/var/tmp").is_dir() else Path(tempfile.gettempdir())
# moto's S3 server takes any key pair; the hosts send these as they would a real store's.
S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "switchyard-multihost",
    "AWS_SECRET_ACCESS_KEY": "switchyard-multihost-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}
S3_BUCKET = "switchyard"
# The job contract's timers, shortened so a partition's expired leases are reaped within seconds.
FAST_CONTRACT = {
    "JOBS_LEASE_SECONDS": "4",
    "JOBS_HEARTBEAT_SECONDS": "1",
    "JOBS_PROGRESS_MIN_INTERVAL_SECONDS": "0.2",
    "JOBS_REAPER_INTERVAL_SECONDS": "1",
    "JOBS_RING_INTERVAL_SECONDS": "1",
    "JOBS_WORKER_HEARTBEAT_SECONDS": "2",
    "JOBS_WORKER_ALIVE_SECONDS": "10",
}


class NamespacesRefused(RuntimeError):
    """The kernel (or our privileges) refuse network namespaces here: the multi-host tests skip."""


@dataclass
class Host:
    name: str
    namespace: str
    address: str  # where the other hosts reach it
    root: Path  # its own folder; nothing else of the run is visible to it
    hidden: list[Path] = field(default_factory=list)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def hostname(self) -> str:
        """Its own (UTS namespace): worker node names read `cpu-<pid>@<namespace>`."""
        return self.namespace

    def log_path(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    def command(self, argv: list[str]) -> list[str]:
        """`argv` as a process of this host: its network, its hostname, its /tmp, no other host's folder."""
        masks = " && ".join(
            f"mount -t tmpfs -o size=1m,mode=0700 tmpfs {shlex.quote(str(path))}" for path in self.hidden
        )
        if REPO_ROOT.resolve().is_relative_to("/tmp"):
            # A checkout under /tmp (a fresh clone there) would vanish under a tmpfs on /tmp, venv
            # and all: the host gets a temporary folder of its own through TMPDIR instead.
            own_tmp = shlex.quote(str(self.root / "tmp"))
            private_tmp = f"mkdir -p {own_tmp} && export TMPDIR={own_tmp}"
        else:
            private_tmp = "mount -t tmpfs -o mode=1777 tmpfs /tmp"
        script = (
            f"hostname {shlex.quote(self.hostname)} && {private_tmp}"
            + (f" && {masks}" if masks else "")
            + ' && exec "$@"'
        )
        return [
            "ip",
            "netns",
            "exec",
            self.namespace,
            "unshare",
            "--mount",
            "--uts",
            "--propagation",
            "private",
            "--",
            "/bin/sh",
            "-c",
            script,
            "sh",
            *argv,
        ]


def _ip(command: str, namespace: str | None = None) -> None:
    """`ip COMMAND` (words split on spaces), in `namespace` when given."""
    argv = ["ip", *(["-n", namespace] if namespace else []), *command.split()]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {result.stderr.strip()}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _namespaces() -> list[str]:
    result = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30)
    return [line.split()[0] for line in result.stdout.splitlines() if line.strip()]


def _remove_namespace(namespace: str) -> None:
    """Kill every process left in it (a namespace lives while one does), then delete it."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), sig)
        deadline = time.monotonic() + 10
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if _pid_alive(int(p)) and not _is_zombie(int(p))]
            time.sleep(0.1)
        if not pids:
            break
    subprocess.run(["ip", "netns", "del", namespace], capture_output=True)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True


def _run_gone(pid: int) -> bool:
    return not _pid_alive(pid) or _is_zombie(pid)


def sweep_stale_runs() -> list[str]:
    """Remove namespaces and folders of earlier runs whose test process is gone (killed before its cleanup)."""
    removed = []
    for namespace in _namespaces():
        match = re.fullmatch(rf"{PREFIX}-(\d+)-[0-9a-f]+-\w+", namespace)
        if match and _run_gone(int(match.group(1))):
            _remove_namespace(namespace)
            removed.append(namespace)
    for folder in RUN_PARENT.glob(f"{PREFIX}-*"):
        match = re.match(rf"{PREFIX}-(\d+)-", folder.name)
        if match and _run_gone(int(match.group(1))):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(str(folder))
    return removed


def check_namespaces_allowed() -> None:
    """Raise NamespacesRefused with the kernel's words where `ip netns add` is refused."""
    if shutil.which("ip") is None or shutil.which("unshare") is None:
        raise NamespacesRefused("`ip` (iproute2) and `unshare` (util-linux) are needed to start hosts in namespaces")
    probe = f"{PREFIX}-{os.getpid()}-{secrets.token_hex(3)}-probe"
    result = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if result.returncode != 0:
        raise NamespacesRefused(f"`ip netns add` refused: {result.stderr.strip() or result.returncode}")
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)


class Cluster:
    """Four hosts in network namespaces on this machine; `start()` brings up the stack, `stop()` removes all."""

    def __init__(self):
        self.token = f"{os.getpid()}-{secrets.token_hex(3)}"
        self.lan = f"{PREFIX}-{self.token}-lan"
        self.subnet = self._free_subnet()
        self.root = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-{os.getpid()}-", dir=RUN_PARENT))
        self.root.chmod(0o755)  # the embedded PostgreSQL runs as its own user when we are root
        n = self.subnet
        addresses = {"web": f"198.18.{n}.1", "broker": f"198.18.{n}.2", "cpu": f"198.18.{n}.3"}
        addresses["sandbox"] = f"198.19.{n}.4"
        self.broker_sandbox_address = f"198.19.{n}.2"
        self.operator_address = f"198.18.{n}.254"
        self.operator_link = f"{PREFIX}{secrets.token_hex(4)}"  # a root-namespace name: 15 bytes at most
        self.hosts = {
            name: Host(name=name, namespace=f"{PREFIX}-{self.token}-{name}", address=address, root=self.root / name)
            for name, address in addresses.items()
        }
        shared_data = REPO_ROOT / ".data"
        for host in self.hosts.values():
            host.hidden = [other.root for other in self.hosts.values() if other is not host]
            if shared_data.is_dir():
                host.hidden.append(shared_data)
        self.secret_key = secrets.token_urlsafe(48)
        self.token_plaintext = ""
        self.topology_path = self.hosts["web"].root / "topology.json"

    # --- addresses and URLs, as each host sees them ------------------------------------------

    @staticmethod
    def _free_subnet() -> int:
        """A 198.18.N.0/24 (the benchmarking range, RFC 2544) that no interface here uses yet."""
        used = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
        for _ in range(100):
            n = random.randint(1, 254)
            if f" 198.18.{n}." not in used and f" 198.19.{n}." not in used:
                return n
        raise RuntimeError("no free 198.18.N.0/24 subnet for the multi-host test")

    def password(self, host: str, name: str) -> str:
        return (self.hosts[host].data_dir / name).read_text().strip()

    def database_url(self) -> str:
        password = self.password("web", "postgres.password")
        return f"postgres://postgres:{password}@{self.hosts['web'].address}:{PG_PORT}/switchyard"

    def broker_url(self) -> str:
        return f"redis://:{self.password('broker', 'redis.password')}@{self.hosts['broker'].address}:{REDIS_PORT}/0"

    def sandbox_broker_env(self) -> dict[str, str]:
        """How host 4 reaches the broker: as the least-privilege ACL user where devservices made one
        (round4-brokeracl: its Procfile line prefers SANDBOX_BROKER_URL), else as the default user."""
        address = f"{self.broker_sandbox_address}:{REDIS_PORT}"
        if (self.hosts["broker"].data_dir / "redis.sandbox.password").exists():
            password = self.password("broker", "redis.sandbox.password")
            return {"SANDBOX_BROKER_URL": f"redis://sandbox:{password}@{address}/0"}
        return {"CELERY_BROKER_URL": f"redis://:{self.password('broker', 'redis.password')}@{address}/0"}

    @property
    def s3_endpoint(self) -> str:
        return f"http://{self.hosts['broker'].address}:{S3_PORT}"

    def storage_url(self) -> str:
        """Every host's artifact storage: an S3 server on host 2 (no folder is shared)."""
        return f"s3://{S3_BUCKET}/media?endpoint_url={self.s3_endpoint}&region_name=us-east-1"

    @property
    def web_url(self) -> str:
        return f"http://{self.hosts['web'].address}:{WEB_PORT}"

    # --- network ------------------------------------------------------------------------

    def _network_up(self) -> None:
        for namespace in [self.lan, *(h.namespace for h in self.hosts.values())]:
            _ip(f"netns add {namespace}")
            _ip("link set lo up", namespace=namespace)
        _ip("link add br0 type bridge", namespace=self.lan)
        _ip("link set br0 up", namespace=self.lan)
        for name in ("web", "broker", "cpu"):
            host = self.hosts[name]
            # One cable from the host to the switch; its switch end is named after the host.
            _ip(f"link add eth0 netns {host.namespace} type veth peer name {name} netns {self.lan}")
            _ip(f"link set {name} master br0 up", namespace=self.lan)
            _ip(f"addr add {host.address}/24 dev eth0", namespace=host.namespace)
            _ip("link set eth0 up", namespace=host.namespace)
        # The operator's cable: this process reaches web (REST) and PostgreSQL (to watch) over it.
        _ip(f"link add {self.operator_link} type veth peer name operator netns {self.lan}")
        _ip("link set operator master br0 up", namespace=self.lan)
        _ip(f"addr add {self.operator_address}/24 dev {self.operator_link}")
        _ip(f"link set {self.operator_link} up")
        # Host 4's only cable ends in host 2; host 2 forwards nothing (new namespaces start with
        # ip_forward 0; said again here so the isolation does not rest on a default).
        broker, sandbox = self.hosts["broker"], self.hosts["sandbox"]
        _ip(f"link add eth1 netns {broker.namespace} type veth peer name eth0 netns {sandbox.namespace}")
        _ip(f"addr add {self.broker_sandbox_address}/32 peer {sandbox.address} dev eth1", namespace=broker.namespace)
        _ip(f"addr add {sandbox.address}/32 peer {self.broker_sandbox_address} dev eth0", namespace=sandbox.namespace)
        _ip("link set eth1 up", namespace=broker.namespace)
        _ip("link set eth0 up", namespace=sandbox.namespace)
        for host in self.hosts.values():
            subprocess.run(
                ["ip", "netns", "exec", host.namespace, "sysctl", "-qw", "net.ipv4.ip_forward=0"],
                check=True,
                capture_output=True,
            )

    def _write_topology(self) -> None:
        """What `manage.py chaos --drills partition` reads (CHAOS_NETNS_TOPOLOGY): which cable is whose."""
        broker = self.hosts["broker"]
        topology = {
            "run": self.token,
            "hosts": {
                "web": {"namespace": self.hosts["web"].namespace, "queues": ["control"], "links": [[self.lan, "web"]]},
                "broker": {"namespace": broker.namespace, "queues": [], "links": [[self.lan, "broker"]]},
                "cpu": {"namespace": self.hosts["cpu"].namespace, "queues": ["cpu"], "links": [[self.lan, "cpu"]]},
                "sandbox": {
                    "namespace": self.hosts["sandbox"].namespace,
                    "queues": ["sandbox"],
                    "links": [[broker.namespace, "eth1"]],
                },
            },
        }
        self.topology_path.write_text(json.dumps(topology, indent=2))

    # --- processes ------------------------------------------------------------------------

    def base_env(self, host: str) -> dict[str, str]:
        """A Django host's environment: its own data folder, the shared database and broker, one SECRET_KEY."""
        return {
            "PATH": f"{Path(sys.executable).parent}:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/root",
            "LANG": "C.UTF-8",
            "DJANGO_SETTINGS_MODULE": "project.settings.local",
            "SWITCHYARD_DATA_DIR": str(self.hosts[host].data_dir),
            "DATABASE_URL": self.database_url(),
            "CELERY_BROKER_URL": self.broker_url(),
            "SECRET_KEY": self.secret_key,
            "ALLOWED_HOSTS": self.hosts["web"].address,
            "LOG_FORMAT": "plain",
            "CHAOS_NETNS_TOPOLOGY": str(self.topology_path),
            "ARTIFACT_STORAGE_URL": self.storage_url(),
            **S3_CREDENTIALS,
            **FAST_CONTRACT,
        }

    def run(self, host: str, argv: list[str], env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
        """A one-off command on a host (manage.py ...); raises with its output when it fails."""
        result = subprocess.run(
            self.hosts[host].command(argv), cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{host}: {' '.join(argv)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
            )
        return result

    def manage(self, host: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.hosts[host].command([sys.executable, "manage.py", *args]),
            cwd=REPO_ROOT,
            env=self.base_env(host),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def spawn(self, host: str, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        target = self.hosts[host]
        log_path = target.log_path(name)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                target.command(argv),
                cwd=REPO_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        target.processes[name] = process
        return process

    def spawn_procfile(self, host: str, entry: str, env: dict[str, str]) -> subprocess.Popen:
        """A Procfile line, run as `make run` runs it (`/bin/sh -c 'exec LINE'`)."""
        line = read_procfile(REPO_ROOT / "Procfile")[entry]
        return self.spawn(host, entry, ["/bin/sh", "-c", f"exec {line}"], env)

    def logs(self, limit: int = 3000) -> str:
        parts = []
        for host in self.hosts.values():
            for path in sorted((host.root / "logs").glob("*.log")) if (host.root / "logs").is_dir() else []:
                parts.append(f"--- {host.name}/{path.name}\n{path.read_text(errors='replace')[-limit:]}")
        return "\n".join(parts)

    # --- life cycle ---------------------------------------------------------------------

    def start(self, timeout: float = 240) -> Cluster:
        sweep_stale_runs()
        for host in self.hosts.values():
            host.data_dir.mkdir(parents=True)
            host.root.chmod(0o755)
            host.data_dir.chmod(0o755)
        self._network_up()
        self._write_topology()
        started = time.monotonic()
        # PostgreSQL on host 1 and Redis on host 2, both by the embedded services of `make run`, at once.
        # Each also listens on its host's own loopback, which no other host can reach, for
        # whatever devservices does locally (an admin connection to 127.0.0.1).
        services = {
            "web": {
                "SWITCHYARD_SERVICES_ADDRESS": f"{self.hosts['web'].address},127.0.0.1",
                "CELERY_BROKER_URL": "configured-elsewhere",
            },
            "broker": {
                "SWITCHYARD_SERVICES_ADDRESS": ",".join(
                    [self.hosts["broker"].address, self.broker_sandbox_address, "127.0.0.1"]
                ),
                "DATABASE_URL": "configured-elsewhere",
            },
        }
        pending = {}
        for name, extra in services.items():
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "LANG": "C.UTF-8",
                "SWITCHYARD_DATA_DIR": str(self.hosts[name].data_dir),
                "SWITCHYARD_PG_PORT": str(PG_PORT),
                "SWITCHYARD_REDIS_PORT": str(REDIS_PORT),
                **extra,
            }
            argv = self.hosts[name].command([sys.executable, "-m", "apps.core.devservices", "up"])
            pending[name] = subprocess.Popen(
                argv, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        # S3-compatible storage on host 2 too: moto's server, as the storage tests use it.
        self.spawn(
            "broker",
            "s3",
            [sys.executable, "-m", "moto.server", "-H", self.hosts["broker"].address, "-p", str(S3_PORT)],
            {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", **S3_CREDENTIALS},
        )
        for name, process in pending.items():
            output, _ = process.communicate(timeout=timeout)
            if process.returncode != 0:
                raise RuntimeError(f"{name}: embedded services did not start:\n{output}")
        self._create_bucket(timeout)
        # Migrate and seed from host 1; the operator's token is printed once by `tokens create`.
        env = self.base_env("web")
        result = self.run(
            "web",
            [
                "/bin/sh",
                "-c",
                f"{sys.executable} manage.py migrate --noinput -v0 && {sys.executable} manage.py seed_demo --quiet && "
                f"{sys.executable} manage.py tokens create --name multihost --as admin --org demo",
            ],
            env,
            timeout=timeout,
        )
        self.token_plaintext = result.stdout.strip().splitlines()[-1]
        web_env = {**env, "WEB_BIND": f"{self.hosts['web'].address}:{WEB_PORT}", "WEB_WORKERS": "1"}
        self.spawn_procfile("web", "web", web_env)
        self.spawn_procfile("web", "worker-control", {**env, "CONTROL_CONCURRENCY": "1"})
        self.spawn_procfile("web", "beat", env)
        self.spawn_procfile("cpu", "worker-cpu", {**self.base_env("cpu"), "CPU_CONCURRENCY": "2"})
        # The sandbox line itself clears the environment down to the broker URL and its limits (Procfile).
        self.spawn_procfile(
            "sandbox",
            "worker-sandbox",
            {
                "PATH": env["PATH"],
                **self.sandbox_broker_env(),
                "SANDBOX_CONCURRENCY": "1",
                "SANDBOX_ACCEPT_WEAK_LIMITS": "1",
            },
        )
        self.wait_ready(timeout - (time.monotonic() - started))
        return self

    def s3_client(self):
        from tests.s3 import s3_client

        return s3_client(self.s3_endpoint, S3_CREDENTIALS)

    def s3_keys(self) -> list[str]:
        """Every object stored on host 2's S3 server, as the operator lists them."""
        pages = self.s3_client().get_paginator("list_objects_v2").paginate(Bucket=S3_BUCKET)
        return sorted(entry["Key"] for page in pages for entry in page.get("Contents", ()))

    def _create_bucket(self, timeout: float) -> None:
        import botocore.exceptions

        client = self.s3_client()
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.create_bucket(Bucket=S3_BUCKET)
                return
            except (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectionClosedError):
                if time.monotonic() > deadline or self.hosts["broker"].processes["s3"].poll() is not None:
                    raise RuntimeError(f"the S3 server on host 2 did not answer\n{self.logs()}") from None
                time.sleep(0.3)

    def wait_ready(self, timeout: float) -> None:
        """web answers, and a worker of each queue has registered (WorkerHost rows, read from host 1's database)."""
        deadline = time.monotonic() + max(timeout, 30)
        missing: set[str] = {"web", "cpu", "sandbox", "control"}
        while time.monotonic() < deadline:
            for host in self.hosts.values():
                for name, process in host.processes.items():
                    if process.poll() is not None:
                        raise RuntimeError(f"{host.name}/{name} exited {process.returncode}\n{self.logs()}")
            if "web" in missing and _http_ok(f"{self.web_url}/healthz"):
                missing.discard("web")
            missing -= self.live_queues()
            if not missing:
                return
            time.sleep(0.5)
        raise RuntimeError(f"not ready: {sorted(missing)}\n{self.logs()}")

    def query(self, sql: str, params=()) -> list[tuple]:
        """Read host 1's database as an operator would (over the operator's cable)."""
        import psycopg2

        conn = psycopg2.connect(self.database_url(), connect_timeout=5)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall()
        finally:
            conn.close()

    def live_queues(self) -> set[str]:
        try:
            rows = self.query(
                "SELECT queues FROM jobs_workerhost WHERE stopped_at IS NULL"
                " AND last_heartbeat_at > now() - interval '30 seconds'"
            )
        except Exception:  # not migrated yet, or not up: not ready
            return set()
        return {queue for (queues,) in rows for queue in queues}

    def stop(self) -> None:
        """Remove everything, whatever state `start()` reached: processes, namespaces, folders."""
        for namespace in [*(h.namespace for h in self.hosts.values()), self.lan]:
            if namespace in _namespaces():
                _remove_namespace(namespace)
        for host in self.hosts.values():
            for process in host.processes.values():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(10)
        # The operator's cable went with the switch namespace; this is for a run stopped half-way.
        subprocess.run(["ip", "link", "del", self.operator_link], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)


def _http_ok(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=3) as response:  # noqa: S310 (an http URL built here)
            return response.status == 200
    except OSError:
        return False
