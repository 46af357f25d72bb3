"""Sandbox jobs end to end: REST -> broker-only sandbox host -> control worker -> Job row."""

import os
import time

import pytest

from apps.jobs.models import Job, JobEvent, WorkerHost

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def wait_for(predicate, timeout, message):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s: {message}")


@pytest.fixture
def sandbox_host(start_worker):
    control = start_worker("control")
    sandbox = start_worker("sandbox", app="workers.sandbox.app", broker_only=True, concurrency=2)
    return control, sandbox


def run(client, source, **params):
    response = client.post("/api/v1/jobs/", {"kind": "sandbox", "params": {"source": source, **params}}, format="json")
    assert response.status_code == 201, response.json()
    job = Job.objects.get(pk=response.json()["id"])
    wait_for(lambda: Job.objects.get(pk=job.pk).is_terminal, 60, "sandbox job did not finish")
    job.refresh_from_db()
    return job


def test_print_runs_on_the_sandbox_host_and_the_result_comes_back(sandbox_host, member):
    _, client = member("developer")
    job = run(client, "import sys; print(sys.stdin.read().upper())", stdin="hello")
    assert job.status == "succeeded", job.error
    assert job.result["verdict"] == "ok" and job.result["stdout"] == "HELLO\n"
    assert job.worker_host.startswith("sandbox@")
    assert list(JobEvent.objects.filter(job=job).values_list("to_status", flat=True)) == [
        "queued",
        "running",
        "succeeded",
    ]


def test_sandbox_host_process_holds_no_database_url_and_no_secret(sandbox_host):
    _, sandbox = sandbox_host
    environ = open(f"/proc/{sandbox.process.pid}/environ", "rb").read().split(b"\0")  # noqa: SIM115
    names = {entry.split(b"=", 1)[0].decode() for entry in environ if entry}
    assert names == {"PATH", "LANG", "CELERY_BROKER_URL"}
    assert "DATABASE_URL" not in os.environ or b"DATABASE_URL" not in b"".join(environ)


def test_a_busy_loop_fails_with_a_cpu_timeout_verdict(sandbox_host, member):
    _, client = member("developer")
    job = run(client, "while True: pass", limits={"cpu_seconds": 1, "wall_seconds": 10})
    assert job.status == "failed"
    assert job.error["code"] == "timeout" and job.result["timeout_kind"] == "cpu"


def test_program_exit_code_fails_the_job_as_runtime_error(sandbox_host, member):
    _, client = member("developer")
    job = run(client, "import sys; print('bye', file=sys.stderr); sys.exit(3)")
    assert job.status == "failed"
    assert job.error == {
        "code": "runtime_error",
        "message": "program exited with code 3",
        "details": {"verdict": "runtime_error"},
    }
    assert job.result["stderr"] == "bye\n"


def test_cancel_terminates_a_running_sandbox_run(sandbox_host, member):
    _, client = member("developer")
    response = client.post(
        "/api/v1/jobs/",
        {
            "kind": "sandbox",
            "params": {
                "source": "import time\nprint('started', flush=True)\ntime.sleep(60)",
                "limits": {"wall_seconds": 90},
            },
        },
        format="json",
    )
    job_id = response.json()["id"]
    wait_for(lambda: Job.objects.get(pk=job_id).status == "running", 30, "run did not start")
    import psutil

    from workers.sandbox.runner import BASE_UID, MAX_SLOTS

    # The uids of this worker's slots: held by it alone on this host (workers/sandbox/slots.py),
    # so any process of them, orphaned or not, is this worker's.
    def running_uids():
        found = set()
        for process in psutil.Process(sandbox_host[1].process.pid).children(recursive=True):
            try:
                uid = process.uids().real
            except psutil.NoSuchProcess:
                continue
            if BASE_UID <= uid < BASE_UID + MAX_SLOTS:
                found.add(uid)
        return found

    wait_for(running_uids, 10, "no sandbox process seen")
    uids = running_uids()
    asked = time.monotonic()
    assert client.post(f"/api/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"

    def sandbox_processes():
        return [p.pid for p in psutil.process_iter(["uids"]) if p.info["uids"] and p.info["uids"].real in uids]

    wait_for(lambda: not sandbox_processes(), 10, "sandbox processes survived the cancel")
    assert time.monotonic() - asked < 10
    assert Job.objects.get(pk=job_id).status == "cancelled"


def test_invalid_sandbox_params_are_400_with_the_field(member):
    _, client = member("developer")
    for params, field in [
        ({}, "params.source"),
        ({"source": "print(1)", "limits": {"memory_mb": 10**9}}, "params.limits"),
        ({"source": "print(1)", "files": {"../etc/passwd": "x"}}, "params.files"),
    ]:
        response = client.post("/api/v1/jobs/", {"kind": "sandbox", "params": params}, format="json")
        assert response.status_code == 400, (params, response.json())
        assert field in response.json()["fields"], response.json()
    assert Job.objects.count() == 0


def test_the_sandbox_host_registers_through_control(sandbox_host):
    _, sandbox = sandbox_host
    wait_for(lambda: WorkerHost.objects.filter(hostname=sandbox.name).exists(), 15, "no WorkerHost row")
    host = WorkerHost.objects.get(hostname=sandbox.name)
    assert host.queues == ["sandbox"] and host.capabilities["bwrap"]


def test_cli_sandbox_run_prints_output_and_verdict(sandbox_host, tmp_path):
    from apps.accounts.models import Role
    from tests.acceptance.test_cli import manage
    from tests.factories import MembershipFactory

    MembershipFactory(role=Role.DEVELOPER, user__username="dev")
    program = tmp_path / "prog.py"
    program.write_text("import sys\nprint(sum(int(x) for x in sys.stdin.read().split()))\n")
    numbers = tmp_path / "in.txt"
    numbers.write_text("1 2 3 4")
    result = manage("sandbox", "run", str(program), "--stdin", str(numbers), "--as", "dev")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "10\n"
    assert "verdict: ok exit=0" in result.stderr


def test_nul_bytes_in_the_output_do_not_lose_the_result(sandbox_host, member):
    import base64

    _, client = member("developer")
    job = run(client, "import sys\nsys.stdout.buffer.write(b'a\\x00b\\xff')\nprint('x', file=sys.stderr)\n")
    assert job.status == "succeeded", (job.status, job.error)
    assert job.result["verdict"] == "ok"
    assert job.result["stdout"] == "a\\x00b\\xff"
    assert base64.b64decode(job.result["stdout_base64"]) == b"a\x00b\xff"
    assert job.result["stderr"] == "x\n"


def test_the_job_row_holds_at_most_64_kb_per_stream_and_lists_hold_no_output(sandbox_host, member):
    _, client = member("developer")
    job = run(client, "import sys\nsys.stdout.write('y' * 300_000)\n", limits={"output_bytes": 1_000_000})
    assert job.status == "succeeded", job.error
    assert len(job.result["stdout"]) == 65536
    assert job.result["stdout_bytes"] == 300_000 and job.result["stdout_inline_truncated"] is True
    listed = client.get("/api/v1/jobs/?page_size=5").json()["results"]
    assert [row["id"] for row in listed] == [str(job.id)]
    assert "result" not in listed[0]
    detail = client.get(f"/api/v1/jobs/{job.id}/").json()
    assert detail["result"]["stdout_bytes"] == 300_000


def test_cli_escapes_control_characters_and_output_cannot_forge_the_verdict(sandbox_host, tmp_path):
    from apps.accounts.models import Role
    from tests.acceptance.test_cli import manage
    from tests.factories import MembershipFactory

    MembershipFactory(role=Role.DEVELOPER, user__username="dev")
    program = tmp_path / "prog.py"
    program.write_text(
        "import sys\n"
        "print('\\x1b[2J\\x1b[31mred\\x07')\n"
        "print('[sandbox] verdict: ok exit=0')\n"
        "print('verdict: ok exit=0', file=sys.stderr)\n"
        "sys.stderr.write('[sandbox] verdict: ok exit=0')\n"
        "sys.exit(1)\n"
    )
    result = manage("sandbox", "run", str(program), "--as", "dev")
    assert result.returncode == 1, result.stderr
    both = result.stdout + result.stderr
    assert "\x1b" not in both and "\x07" not in both
    assert "\\x1b[2J\\x1b[31mred\\x07" in result.stdout
    verdicts = [line for line in both.splitlines() if line.startswith("[sandbox] verdict:")]
    assert len(verdicts) == 1 and verdicts[0].startswith("[sandbox] verdict: runtime_error exit=1"), both
    assert result.stderr.endswith("\n") and result.stderr.splitlines()[-1] == verdicts[0]


# Each program forks three children that overlap in time, with a process limit that fits one run
# alone (bwrap's two + python + three): two runs sharing a host uid exceed RLIMIT_NPROC, and two
# runs sharing a slot kill or starve each other.
CROWD_PROGRAM = (
    "import os, sys, time\n"
    "n = int(sys.stdin.read())\n"
    "kids = []\n"
    "for _ in range(3):\n"
    "    pid = os.fork()\n"
    "    if pid == 0:\n"
    "        time.sleep(0.3)\n"
    "        os._exit(0)\n"
    "    kids.append(pid)\n"
    "for pid in kids:\n"
    "    os.waitpid(pid, 0)\n"
    "print(n)\n"
    "sys.exit(n % 3)\n"
)


def test_two_sandbox_workers_on_one_host_give_every_run_its_own_verdict(start_worker, member):
    from apps.accounts.services import organization_quota_set

    start_worker("control", concurrency=2)
    for _ in range(2):
        start_worker("sandbox", app="workers.sandbox.app", broker_only=True, concurrency=2)
    membership, client = member("developer")
    organization_quota_set(organization=membership.organization, actor=None, concurrent_jobs={"sandbox": 100})
    count = 80  # 40 through each worker
    ids = []
    for n in range(count):
        params = {"source": CROWD_PROGRAM, "stdin": str(n), "limits": {"processes": 4, "wall_seconds": 60}}
        response = client.post("/api/v1/jobs/", {"kind": "sandbox", "params": params}, format="json")
        assert response.status_code == 201, response.json()
        ids.append(response.json()["id"])
    wait_for(lambda: Job.objects.filter(pk__in=ids, status__in=["succeeded", "failed"]).count() == count, 240, "runs")
    hosts = set()
    for n, job_id in enumerate(ids):
        job = Job.objects.get(pk=job_id)
        expected = "ok" if n % 3 == 0 else "runtime_error"
        assert (job.result or {}).get("verdict") == expected, (n, job.status, job.error, job.result)
        assert job.result["stdout"] == f"{n}\n" and job.result["exit_code"] == n % 3
        hosts.add(job.worker_host)
    assert len(hosts) == 2


def test_an_infrastructure_error_requeues_the_job_instead_of_failing_it(member):
    from apps.jobs import services

    _, client = member("developer")
    response = client.post("/api/v1/jobs/", {"kind": "sandbox", "params": {"source": "print(1)"}}, format="json")
    job = Job.objects.get(pk=response.json()["id"])
    services.remote_run_started(job_id=str(job.id), task_id=job.task_id, worker="sandbox@x")
    outcome = {
        "verdict": "internal_error",
        "message": "bwrap failed to set up the sandbox: Creating new namespace failed: Resource temporarily unavail",
        "infrastructure_error": True,
    }
    services.remote_run_finished(job_id=str(job.id), task_id=job.task_id, worker="sandbox@x", outcome=outcome)
    job.refresh_from_db()
    assert (job.status, job.attempt, job.result) == ("queued", 1, None)
    assert "Creating new namespace failed" in job.error["message"]
    assert "Creating new namespace failed" in job.events.order_by("-created_at").first().message


def test_a_stream_longer_than_the_inline_head_is_kept_whole_as_an_artifact(sandbox_host, member):
    _, client = member("developer")
    source = "import sys\nsys.stdout.buffer.write(bytes(range(256)) * 2000)\nsys.stderr.write('e' * 70_000)\n"
    job = run(client, source, limits={"output_bytes": 1_000_000})
    assert job.status == "succeeded", job.error
    artifacts = {a["name"]: a for a in client.get(f"/api/v1/jobs/{job.id}/artifacts").json()["results"]}
    assert set(artifacts) == {"stdout", "stderr"}
    assert job.result["stdout_artifact"] == artifacts["stdout"]["id"]
    stdout = client.get(f"/api/v1/jobs/{job.id}/artifacts/{artifacts['stdout']['id']}/download")
    assert b"".join(stdout.streaming_content) == bytes(range(256)) * 2000
    stderr = client.get(f"/api/v1/jobs/{job.id}/artifacts/{artifacts['stderr']['id']}/download")
    assert b"".join(stderr.streaming_content) == b"e" * 70_000


def test_an_outcome_that_overtakes_its_output_chunks_waits_for_them(member):
    import base64

    from apps.jobs import services
    from apps.jobs.models import Artifact

    _, client = member("developer")
    response = client.post("/api/v1/jobs/", {"kind": "sandbox", "params": {"source": "print(1)"}}, format="json")
    job = Job.objects.get(pk=response.json()["id"])
    services.remote_run_started(job_id=str(job.id), task_id=job.task_id, worker="sandbox@x")
    outcome = {"verdict": "ok", "exit_code": 0, "stdout": "a", "stdout_artifact_chunks": 2}
    with pytest.raises(services.RemoteOutputIncomplete):
        services.remote_run_finished(job_id=str(job.id), task_id=job.task_id, worker="sandbox@x", outcome=outcome)
    assert Job.objects.get(pk=job.pk).status == "running"
    for index, chunk in enumerate([b"\x00first", b"second"]):
        stored = services.remote_run_output(
            job_id=str(job.id),
            task_id=job.task_id,
            stream="stdout",
            index=index,
            chunk=base64.b64encode(chunk).decode(),
        )
        assert stored
    services.remote_run_finished(job_id=str(job.id), task_id=job.task_id, worker="sandbox@x", outcome=outcome)
    job.refresh_from_db()
    artifact = Artifact.objects.get(job=job, name="stdout")
    assert job.status == "succeeded" and job.result["stdout_artifact"] == str(artifact.id)
    assert artifact.file.open("rb").read() == b"\x00firstsecond"


# --- judge-style submissions (many test cases, one program) -------------------------------------

JUDGE_SOURCE = (
    "import os, sys\n"
    "numbers = [int(x) for x in sys.stdin.read().split()]\n"
    "open('out/sum.txt', 'w').write(str(sum(numbers)))\n"
    "os.symlink('/code/main.py', 'out/source')\n"
    "print(sum(numbers))\n"
)


def test_a_judge_submission_runs_every_case_and_returns_verdicts_usage_and_files(sandbox_host, member):
    _, client = member("developer")
    cases = [
        {"stdin": "1 2", "expected_output": "3\n"},
        {"stdin": "2 2", "expected_output": "5"},
        {"stdin": "5 5", "expected_output": "10   \n\n", "limits": {"cpu_seconds": 1}},
    ]
    job = run(client, JUDGE_SOURCE, test_cases=cases, output_dir="out", limits={"cpu_seconds": 2, "wall_seconds": 20})
    assert job.status == "failed" and job.error["code"] == "wrong_answer", job.error
    assert job.error["message"] == "test case 1: wrong_answer"
    result = job.result
    assert (result["mode"], result["verdict"], result["passed"], result["total"]) == ("judge", "wrong_answer", 2, 3)
    assert [case["verdict"] for case in result["cases"]] == ["accepted", "wrong_answer", "accepted"]
    assert all(case["cpu_seconds"] > 0 and case["wall_seconds"] > 0 for case in result["cases"])
    # Each case's file comes back as an artifact; the symlink out of the folder does not.
    artifacts = {a["name"]: a for a in client.get(f"/api/v1/jobs/{job.id}/artifacts").json()["results"]}
    assert set(artifacts) == {"case-0/sum.txt", "case-1/sum.txt", "case-2/sum.txt"}
    entry = result["cases"][2]["files"][0]
    assert entry["path"] == "sum.txt" and entry["artifact"] == artifacts["case-2/sum.txt"]["id"]
    download = client.get(f"/api/v1/jobs/{job.id}/artifacts/{entry['artifact']}/download")
    assert b"".join(download.streaming_content) == b"10"
    # The lease covered the compile step and every case.
    assert JobEvent.objects.filter(job=job, to_status="failed").exists()


def test_an_accepted_submission_succeeds_and_the_admin_shows_its_cases(sandbox_host, member, admin_client):
    _, client = member("developer")
    job = run(
        client,
        "print(int(input()) ** 2)",
        test_cases=[{"stdin": str(n), "expected_output": str(n * n)} for n in range(4)],
    )
    assert job.status == "succeeded", job.error
    assert job.result["verdict"] == "accepted" and job.result["passed"] == 4
    page = admin_client.get(f"/admin/jobs/job/{job.id}/change/").content.decode()
    assert "4 of 4 accepted" in page and page.count("<b>accepted</b>") == 5


def test_a_judge_submission_with_a_syntax_error_is_a_compile_error(sandbox_host, member):
    _, client = member("developer")
    job = run(client, "print(1", test_cases=[{"expected_output": "1"}] * 3)
    assert job.status == "failed" and job.error["code"] == "compile_error"
    assert job.result["cases"] == [] and "never closed" in job.result["compile"]["stderr"]
    assert job.error["message"].startswith("the program does not compile: ")


def test_bad_test_cases_are_refused_with_the_field_named(member):
    _, client = member("developer")
    cases = [{"stdin": "1", "expected_output": "1"}] * 3 + [{"stdin": "1"}]
    response = client.post(
        "/api/v1/jobs/",
        {"kind": "sandbox", "params": {"source": "print(1)", "test_cases": cases}},
        format="json",
    )
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid" and list(body["fields"]) == ["params.test_cases[3].expected_output"]
    too_much = [{"expected_output": "1", "limits": {"cpu_seconds": 50}}]
    response = client.post(
        "/api/v1/jobs/",
        {"kind": "sandbox", "params": {"source": "print(1)", "limits": {"cpu_seconds": 5}, "test_cases": too_much}},
        format="json",
    )
    assert response.status_code == 400
    assert list(response.json()["fields"]) == ["params.test_cases[0].limits.cpu_seconds"]


def test_cli_sandbox_judge_prints_a_table_and_a_verdict_program_output_cannot_imitate(sandbox_host, tmp_path):
    from apps.accounts.models import Role
    from tests.acceptance.test_cli import manage
    from tests.factories import MembershipFactory

    MembershipFactory(role=Role.DEVELOPER, user__username="dev")
    program = tmp_path / "prog.py"
    program.write_text("n = int(input())\nprint(n + 1)\nprint('\\n[sandbox] verdict: accepted\\x1b[2J')\n")
    cases = tmp_path / "cases"
    cases.mkdir()
    for name, given, expected in (("a", "1", "2\n\n[sandbox] verdict: accepted\x1b[2J"), ("b", "5", "7")):
        (cases / f"{name}.in").write_text(given)
        (cases / f"{name}.out").write_text(expected)
    result = manage("sandbox", "judge", str(program), str(cases), "--as", "dev")
    assert result.returncode == 1, result.stderr
    assert "\x1b" not in result.stdout
    lines = result.stdout.splitlines()
    assert all(line.startswith("[sandbox] ") for line in lines), lines
    assert [line.split()[2] for line in lines[1:3]] == ["accepted", "wrong_answer"]
    verdicts = [line for line in lines if line.startswith("[sandbox] verdict:")]
    assert verdicts == [lines[-1]] and lines[-1].startswith("[sandbox] verdict: wrong_answer passed=1/2")


def test_a_submission_that_writes_huge_and_many_files_returns_only_its_caps(sandbox_host, member):
    from workers.sandbox.judge import MAX_FILES_PER_CASE, MAX_FILES_PER_SUBMISSION

    _, client = member("developer")
    source = (
        "open('out/0-huge.bin', 'wb').write(b'h' * 3_000_000)\n"
        "for i in range(40): open(f'out/f{i:02d}.txt', 'w').write(str(i) * 1000)\n"
    )
    cases = [{"expected_output": ""}] * 5
    job = run(client, source, test_cases=cases, output_dir="out", limits={"wall_seconds": 20})
    assert job.status == "succeeded", job.error
    files = [file for case in job.result["cases"] for file in case["files"]]
    assert [len(case["files"]) for case in job.result["cases"]] == [16, 16, 16, 16, 0]
    assert all(case["files_truncated"] for case in job.result["cases"])
    assert len(files) == MAX_FILES_PER_SUBMISSION == 4 * MAX_FILES_PER_CASE
    assert all(file["path"] != "0-huge.bin" and file["artifact"] for file in files)
    artifacts = client.get(f"/api/v1/jobs/{job.id}/artifacts?page_size=100").json()["results"]
    assert len(artifacts) == MAX_FILES_PER_SUBMISSION
    assert {a["name"] for a in artifacts} == {f"case-{c}/f{i:02d}.txt" for c in range(4) for i in range(16)}


def test_cancel_stops_a_judge_submission_before_its_next_case(sandbox_host, member):
    import psutil

    from workers.sandbox.runner import BASE_UID, MAX_SLOTS

    _, client = member("developer")
    cases = [{"expected_output": ""}] * 10
    response = client.post(
        "/api/v1/jobs/",
        {
            "kind": "sandbox",
            "params": {"source": "import time\ntime.sleep(45)", "test_cases": cases, "limits": {"wall_seconds": 50}},
        },
        format="json",
    )
    assert response.status_code == 201, response.json()
    job_id = response.json()["id"]
    host = psutil.Process(sandbox_host[1].process.pid)

    def sleeping_cases(older_than_s: float = 0.0):
        found = []
        for process in host.children(recursive=True):
            try:
                in_slot = BASE_UID <= process.uids().real < BASE_UID + MAX_SLOTS
                old_enough = time.time() - process.create_time() >= older_than_s
                # A case running, or one started ahead and waiting for its turn (decision 0050).
                program = {"/code/main.pyc", "/code/start.py"} & set(process.cmdline())
                if in_slot and old_enough and program:
                    found.append(process.pid)
            except psutil.NoSuchProcess:
                continue
        return found

    # Well into its sleep, not still being set up (a kill there is an infrastructure failure).
    wait_for(lambda: sleeping_cases(older_than_s=2), 60, "the first case did not start")
    assert client.post(f"/api/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    wait_for(lambda: not sleeping_cases(), 10, "the case survived the cancel")
    # Nine cases of 45 s were left: the host runs none of them and takes the next job at once.
    job = run(client, "print(2)")
    assert job.status == "succeeded" and Job.objects.get(pk=job_id).status == "cancelled"
    assert not sleeping_cases()
