"""Hosts in network namespaces (issue 22): host 1 web + PostgreSQL, host 2 the broker, host 3 a cpu worker,
host 4 a sandbox worker that reaches only the broker; every job kind through REST on host 1, run on the
others with no shared folder; a cpu host's cable cut mid-run and mended loses, doubles and strands no job."""

import io
import json
import sys
import time

import httpx
import numpy as np
import pytest

from workers.testing_models import build_test_model

# One stack for the module: four hosts, PostgreSQL, Redis, gunicorn and four Celery processes.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

TERMINAL = {"succeeded", "failed", "cancelled"}
# Each line prints "<target> <errno>" (0: connected) for a TCP connection attempt from the host it runs on.
PROBE = """
import socket, sys
for target in sys.argv[1:]:
    address, port = target.rsplit(":", 1)
    with socket.socket() as sock:
        sock.settimeout(2)
        print(target, sock.connect_ex((address, int(port))))
"""


def probe(cluster, host: str, targets: list[str], *, before: str = "") -> dict[str, int]:
    """errno of a TCP connect from `host` to each address:port (0: it connected), after the shell line `before`."""
    argv = [sys.executable, "-c", PROBE, *targets]
    if before:
        argv = ["/bin/sh", "-c", f'{before} && exec "$@"', "sh", *argv]
    result = cluster.run(host, argv, {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}, timeout=60)
    return {line.split()[0]: int(line.split()[1]) for line in result.stdout.splitlines()}


@pytest.fixture(scope="module")
def api(cluster):
    with httpx.Client(
        base_url=f"{cluster.web_url}/api/v1",
        headers={"Authorization": f"Token {cluster.token_plaintext}"},
        timeout=30,
    ) as client:
        yield client


def wait_terminal(api, job_id: str, timeout: float = 150) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = api.get(f"/jobs/{job_id}/").json()
        if job["status"] in TERMINAL:
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} not finished within {timeout}s: {job}")


def download(api, job_id: str, name: str) -> bytes:
    artifacts = {a["name"]: a for a in api.get(f"/jobs/{job_id}/artifacts").json()["results"]}
    response = api.get(f"/jobs/{job_id}/artifacts/{artifacts[name]['id']}/download")
    assert response.status_code == 200, response.text[:500]
    return response.content


def test_the_sandbox_host_reaches_the_broker_and_nothing_else(cluster):
    web, broker = cluster.hosts["web"].address, cluster.hosts["broker"].address
    lan_targets = [f"{web}:5432", f"{web}:8000", f"{broker}:6379"]
    # The probe itself works: the cpu host reaches PostgreSQL, web and the broker.
    assert probe(cluster, "cpu", lan_targets) == dict.fromkeys(lan_targets, 0)

    from_sandbox = probe(cluster, "sandbox", [*lan_targets, f"{cluster.broker_sandbox_address}:6379"])
    assert from_sandbox[f"{cluster.broker_sandbox_address}:6379"] == 0
    assert from_sandbox[f"{web}:5432"] != 0 and from_sandbox[f"{web}:8000"] != 0, from_sandbox
    # Its one route is the broker's address ...
    routes = cluster.run("sandbox", ["ip", "-4", "route"], {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}).stdout
    assert [line.split()[0] for line in routes.splitlines()] == [cluster.broker_sandbox_address], routes
    # ... and a route it adds through host 2 leads nowhere: host 2 forwards nothing.
    rerouted = probe(
        cluster,
        "sandbox",
        [f"{web}:5432", f"{web}:8000"],
        before=f"ip route add default via {cluster.broker_sandbox_address}",
    )
    assert rerouted[f"{web}:5432"] != 0 and rerouted[f"{web}:8000"] != 0, rerouted

    # The sandbox worker holds the broker's URL and nothing else: no DATABASE_URL, no SECRET_KEY.
    worker = cluster.hosts["sandbox"].processes["worker-sandbox"]
    environ = open(f"/proc/{worker.pid}/environ", "rb").read().split(b"\0")  # noqa: SIM115 (a /proc read)
    names = {entry.split(b"=", 1)[0].decode() for entry in environ if entry}
    assert "CELERY_BROKER_URL" in names and not names & {"DATABASE_URL", "SECRET_KEY"}, names
    if "SANDBOX_BROKER_URL" in cluster.sandbox_broker_env():
        # With the broker's least-privilege user (round4-brokeracl), host 4 connects as it.
        assert any(entry.startswith(b"CELERY_BROKER_URL=redis://sandbox:") for entry in environ)


def test_no_host_sees_another_hosts_folder(cluster):
    for name, host in cluster.hosts.items():
        others = [str(other.root) for other in cluster.hosts.values() if other is not host]
        listing = cluster.run(name, ["ls", "-A", *others], {"PATH": "/usr/bin:/bin"}).stdout
        # `ls` of several folders prints each name and then its (here empty) content.
        assert [line for line in listing.splitlines() if line and not line.endswith(":")] == [], (name, listing)
        # Its own folder it sees whole.
        assert "data" in cluster.run(name, ["ls", "-A", str(host.root)], {"PATH": "/usr/bin:/bin"}).stdout.split()


def test_sandbox_and_simulation_jobs_run_across_hosts(cluster, api):
    response = api.post("/jobs/", json={"kind": "sandbox", "params": {"source": "print(6 * 7)"}})
    assert response.status_code == 201, response.text
    sandbox_id = response.json()["id"]

    agents = [
        api.post("/agents/", json={"name": f"a{i}", "kind": "research", "traits": {"openness": i / 5}}).json()["id"]
        for i in range(4)
    ]
    scenario = api.post(
        "/scenarios/", json={"name": "hosts", "spec": {"rounds": 20, "topology": {"type": "all_pairs"}}}
    )
    assert scenario.status_code == 201, scenario.text
    run = api.post(f"/scenarios/{scenario.json()['id']}/runs", json={"agent_ids": agents, "seed": 3})
    assert run.status_code == 201, run.text

    sandbox = wait_terminal(api, sandbox_id)
    assert sandbox["status"] == "succeeded", sandbox
    assert sandbox["result"]["stdout"] == "42\n"
    assert sandbox["worker_host"].endswith(f"@{cluster.hosts['sandbox'].hostname}")

    simulation = wait_terminal(api, run.json()["id"])
    assert simulation["status"] == "succeeded", simulation
    assert simulation["worker_host"].endswith(f"@{cluster.hosts['cpu'].hostname}")


def test_inference_compile_memory_import_and_artifacts_cross_hosts_with_no_shared_folder(cluster, api, tmp_path):
    model = build_test_model("multi_io", tmp_path / "multi_io.onnx")
    uploaded = api.post("/models/", data={"name": "scorer"}, files={"file": ("scorer.onnx", model.read_bytes())})
    assert uploaded.status_code == 201, uploaded.text
    encoder = build_test_model("mlp", tmp_path / "mlp.onnx", seed=5)
    uploaded = api.post("/models/", data={"name": "encoder"}, files={"file": ("encoder.onnx", encoder.read_bytes())})
    assert uploaded.status_code == 201, uploaded.text

    rng = np.random.default_rng(7)
    x = rng.standard_normal((12, 4)).astype(np.float32)
    ids = rng.integers(-5, 5, size=(12, 3)).astype(np.int64)
    inference = api.post(
        "/jobs/",
        json={"kind": "inference", "params": {"model": "scorer", "inputs": {"x": x.tolist(), "ids": ids.tolist()}}},
    )
    assert inference.status_code == 201, inference.text
    compile_ = api.post(
        "/models/encoder/versions/1/compile", json={"target": "cpu-int8", "sample_rows": 32, "latency_runs": 3}
    )
    assert compile_.status_code == 202, compile_.text
    agent = api.post("/agents/", json={"name": "importer", "kind": "research"}).json()["id"]
    lines = "\n".join(json.dumps({"text": f"note {i} about the weather"}) for i in range(20))
    memory_import = api.post(
        f"/agents/{agent}/memories/import", files={"file": ("m.jsonl", io.BytesIO(lines.encode()))}
    )
    assert memory_import.status_code == 202, memory_import.text

    cpu_host = f"@{cluster.hosts['cpu'].hostname}"
    for response in (inference, compile_, memory_import):
        job = wait_terminal(api, response.json()["id"])
        assert job["status"] == "succeeded" and job["worker_host"].endswith(cpu_host), job
    # Outputs written on host 3 are served by host 1.
    outputs = np.load(io.BytesIO(download(api, inference.json()["id"], "outputs.npz")), allow_pickle=False)
    assert outputs["y"].shape[0] == 12
    compiled = api.get("/models/encoder/").json()
    assert [v["number"] for v in compiled["versions"]] == [2, 1]
    searched = api.get(f"/agents/{agent}/memories/search", params={"q": "weather", "k": 3}).json()["results"]
    assert len(searched) == 3
    # Every file went through the S3 server on host 2: no host keeps one under its MEDIA_ROOT.
    stored = cluster.s3_keys()
    assert any(key.endswith(".onnx") for key in stored) and any(key.endswith("outputs.npz") for key in stored), stored
    for host in ("web", "cpu"):
        media = cluster.hosts[host].data_dir / "media"
        assert not [p for p in media.rglob("*") if p.is_file()], (host, list(media.rglob("*")))


def test_a_cpu_host_cut_off_mid_run_loses_doubles_and_strands_no_job(cluster):
    result = cluster.manage(
        "web",
        "chaos",
        "--drills",
        "partition",
        "--destructive",
        "--jobs",
        "6",
        "--duration",
        "2",
        "--partition-seconds",
        "8",
        "--settle-timeout",
        "120",
        timeout=200,
    )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{cluster.logs()}"
    assert "every invariant held" in result.stdout
    row = next(line.split() for line in result.stdout.splitlines() if line.startswith("partition"))
    assert row[1:6] == ["6", "0", "0", "0", "0"], result.stdout
    assert "cut" in result.stderr and cluster.hosts["cpu"].name in result.stderr, result.stderr
    # The cut bit: the leases of the jobs running on host 3 expired and another attempt ran them, once.
    rows = cluster.query(
        "SELECT j.attempt, (SELECT count(*) FROM jobs_jobevent e WHERE e.job_id = j.id AND e.to_status = 'succeeded')"
        " FROM jobs_job j JOIN accounts_organization o ON o.id = j.organization_id WHERE o.slug = 'chaos'"
    )
    assert len(rows) == 6 and all(successes == 1 for _, successes in rows), rows
    assert any(attempt > 1 for attempt, _ in rows), rows
