"""Least privilege for sandbox hosts (issue 22): what their broker user can and cannot do, on real brokers.

A sandbox host connects as the `sandbox` user (SANDBOX_BROKER_URL; the embedded Redis creates it):
it consumes `sandbox` and writes `sandbox_reports`, and a report changes a job only when it carries
the MAC of a run the host was given. Everything here runs against the real broker and real workers.
"""

import json
import os
import secrets
import shutil
import subprocess
import time
import uuid
from urllib.parse import quote, urlsplit

import pytest
from django.conf import settings
from kombu import Connection, Exchange, Queue

from apps.accounts.models import AuditEvent
from apps.core.worker_process import WorkerProcess
from apps.jobs import services
from apps.jobs.models import Job, WorkerHost
from project import queues
from tests.acceptance.test_job_contract import wait_for
from workers.sandbox import reports

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

needs_redis_sandbox_user = pytest.mark.skipif(
    not settings.SANDBOX_BROKER_URL.startswith(("redis://", "rediss://")),
    reason="the broker is not Redis with a sandbox ACL user (SANDBOX_BROKER_URL; the embedded Redis has one)",
)


def redis_as(url: str):
    import redis

    return redis.Redis.from_url(url)


def denied(call) -> bool:
    import redis

    try:
        call()
    except redis.exceptions.NoPermissionError:
        return True
    return False


@needs_redis_sandbox_user
def test_the_sandbox_user_cannot_publish_to_control_cpu_or_gpu_nor_read_any_queue_but_sandbox(broker):
    sandbox = redis_as(settings.SANDBOX_BROKER_URL)
    admin = redis_as(settings.CELERY_BROKER_URL)
    admin.lpush(queues.CONTROL, b"{}")  # something a reader could see
    try:
        for queue in (queues.CONTROL, queues.CPU, queues.GPU):
            for key in (queue, f"{queue}:1", f"{queue}:9"):
                assert denied(lambda key=key: sandbox.lpush(key, b"{}")), f"LPUSH {key}"
                assert denied(lambda key=key: sandbox.rpush(key, b"{}")), f"RPUSH {key}"
                assert denied(lambda key=key: sandbox.rpop(key)), f"RPOP {key}"
                assert denied(lambda key=key: sandbox.brpop([key], timeout=1)), f"BRPOP {key}"
            assert denied(lambda queue=queue: sandbox.lrange(queue, 0, -1)), f"LRANGE {queue}"
            assert denied(lambda queue=queue: sandbox.llen(queue)), f"LLEN {queue}"
        # Nor the shared unacked hash (other queues' messages in flight), nor its own transport's
        # whole hash and index (other sandbox hosts' runs in flight, tokens included).
        for read in (
            lambda: sandbox.hgetall("unacked"),
            lambda: sandbox.hget("unacked", "tag"),
            lambda: sandbox.hgetall("sandbox_unacked"),
            lambda: sandbox.hkeys("sandbox_unacked"),
            lambda: sandbox.zrange("sandbox_unacked_index", 0, -1),
            lambda: sandbox.lrange(queues.SANDBOX, 0, -1),
            lambda: sandbox.keys("*"),
            lambda: sandbox.scan(0),
            lambda: sandbox.dump(queues.SANDBOX),
            lambda: sandbox.lrange(queues.SANDBOX_REPORTS, 0, -1),
        ):
            assert denied(read)
        # No broadcast to the workers (shutdown, revoke, ...) and no reading of the event stream.
        assert denied(lambda: sandbox.publish("/15.celery.pidbox", b"{}"))
        events = sandbox.pubsub()
        # (a subscription's answer is read with the next message)
        assert denied(lambda: (events.psubscribe("/15.celeryev/*"), events.get_message(timeout=2)))
        events.close()
        # A Celery publish to `control` as this user fails too (kombu's own path).
        from project.celery import app

        with Connection(settings.SANDBOX_BROKER_URL) as conn, pytest.raises(Exception, match="no permissions"):
            app.send_task("jobs.reap", queue=queues.direct_queue(queues.CONTROL), retry=False, connection=conn)
        # What it may do: consume `sandbox`, write its reports.
        assert sandbox.lpush(queues.SANDBOX_REPORTS, b"not a report") == 1
        assert sandbox.brpop([queues.SANDBOX, f"{queues.SANDBOX}:5"], timeout=1) is None
        assert admin.lrange(queues.CONTROL, 0, -1) == [b"{}"]
    finally:
        admin.delete(queues.CONTROL, queues.SANDBOX_REPORTS)


@needs_redis_sandbox_user
def test_a_sandbox_worker_as_the_sandbox_user_runs_runs_and_judge_submissions_and_is_never_refused(
    start_worker, member
):
    admin = redis_as(settings.CELERY_BROKER_URL)
    admin.execute_command("ACL", "LOG", "RESET")
    start_worker("control")
    sandbox = start_worker("sandbox", app="workers.sandbox.app", broker_only=True, concurrency=2)
    assert urlsplit(sandbox.env["CELERY_BROKER_URL"]).username == "sandbox"
    _, client = member("developer")
    plain = {"source": "import sys; print(sys.stdin.read()[::-1])", "stdin": "olleh"}
    judge = {
        "source": "n = sum(int(x) for x in input().split())\nopen('out/sum.txt', 'w').write(str(n))\nprint(n)\n",
        "test_cases": [{"stdin": "1 2\n", "expected_output": "3\n"}, {"stdin": "2 2\n", "expected_output": "5\n"}],
        "output_dir": "out",
    }
    ids = [
        client.post("/api/v1/jobs/", {"kind": "sandbox", "params": p}, format="json").json()["id"]
        for p in (plain, judge)
    ]
    wait_for(lambda: all(Job.objects.get(pk=i).is_terminal for i in ids), 90, f"sandbox jobs:\n{sandbox.log()[-3000:]}")
    ran, judged = (Job.objects.get(pk=i) for i in ids)
    assert (ran.status, ran.result["stdout"]) == ("succeeded", "hello\n"), (ran.error, ran.result)
    assert judged.result["mode"] == "judge" and [c["verdict"] for c in judged.result["cases"]] == [
        "accepted",
        "wrong_answer",
    ]
    # Each case's output file came back in chunks (output reports) and is an artifact.
    assert judged.result["cases"][0]["files"][0]["artifact"] and judged.artifacts.filter(name="case-1/sum.txt").exists()
    assert ran.worker_host == sandbox.name and WorkerHost.objects.get(hostname=sandbox.name).queues == ["sandbox"]
    assert not AuditEvent.objects.filter(action=services.sandbox_runs.REFUSED_ACTION).exists()
    # Everything the worker did was within its ACL (redis-py's CLIENT SETINFO on connect, which
    # Redis 6.2 does not know anyway and redis-py ignores, is the one refusal).
    refused = [
        (entry[b"reason"], entry[b"object"])
        for entry in admin.execute_command("ACL", "LOG")
        if entry[b"username"] == b"sandbox" and entry[b"object"] != b"client"
    ]
    assert refused == []


def publish_reports(url: str, *bodies) -> None:
    """Publish report bodies to `sandbox_reports` as a sandbox host would (as the sandbox user on Redis)."""
    transport = "workers.sandbox.broker:Transport" if url.startswith("redis") else None
    with Connection(url, transport=transport) as conn:
        producer = conn.Producer(serializer="json")
        for body in bodies:
            producer.publish(body, declare=[], **queues.sandbox_reports_route(url))


def refusals(job_id) -> list[dict]:
    return list(
        AuditEvent.objects.filter(action=services.sandbox_runs.REFUSED_ACTION, target_id=str(job_id)).values_list(
            "details", flat=True
        )
    )


def test_forged_outcomes_are_refused_audited_and_change_nothing_while_a_true_one_is_recorded(start_worker, member):
    start_worker("control")
    _, client = member("developer")
    # No sandbox host runs: the jobs stay queued with their dispatch (task id), as if in flight.
    given, other = (
        Job.objects.get(
            pk=client.post(
                "/api/v1/jobs/", {"kind": "sandbox", "params": {"source": "print(1)"}}, format="json"
            ).json()["id"]
        )
        for _ in range(2)
    )
    given_token = services.sandbox_run_token(job_id=str(given.pk), task_id=given.task_id)
    outcome = {"verdict": "ok", "exit_code": 0, "stdout": "forged\n", "stderr": ""}
    url = settings.SANDBOX_BROKER_URL or settings.CELERY_BROKER_URL
    publish_reports(
        url,
        # Another host's run, MAC'd with the token of the run this host was given.
        reports.report_body(reports.FINISHED, [str(other.pk), other.task_id, "sandbox@evil", outcome], given_token),
        # A guessed token.
        reports.report_body(
            reports.FINISHED, [str(other.pk), other.task_id, "sandbox@evil", outcome], secrets.token_hex(32)
        ),
        # No MAC at all, and a true MAC over a payload changed on the way.
        {**reports.report_body(reports.STARTED, [str(other.pk), other.task_id, "sandbox@evil"], None)},
        {
            **reports.report_body(
                reports.FINISHED, [str(given.pk), given.task_id, "sandbox@evil", outcome], given_token
            ),
            "payload": json.dumps([reports.FINISHED, str(given.pk), given.task_id, "sandbox@evil", {"verdict": "ok"}]),
        },
    )
    wait_for(lambda: len(refusals(other.pk)) == 3 and len(refusals(given.pk)) == 1, 30, "refusals audited")
    assert {d["reason"] for d in refusals(other.pk)} == {"bad_mac"}
    assert all(d["report"] in ("finished", "started") for d in refusals(other.pk))
    assert refusals(other.pk)[0]["organization"] == other.organization_id
    for job in (given, other):
        fresh = Job.objects.get(pk=job.pk)
        assert (fresh.status, fresh.attempt, fresh.result, fresh.worker_host) == ("queued", 0, None, job.worker_host)
    # The host given the run reports it truly: recorded.
    publish_reports(
        url,
        reports.report_body(reports.STARTED, [str(given.pk), given.task_id, "sandbox@honest"], given_token),
        reports.report_body(reports.FINISHED, [str(given.pk), given.task_id, "sandbox@honest", outcome], given_token),
    )
    wait_for(lambda: Job.objects.get(pk=given.pk).is_terminal, 30, "the true outcome was not recorded")
    given.refresh_from_db()
    assert (given.status, given.result["stdout"], given.worker_host) == ("succeeded", "forged\n", "sandbox@honest")
    assert Job.objects.get(pk=other.pk).status == "queued"


def test_what_is_not_a_report_is_refused_and_a_host_report_cannot_claim_other_queues(start_worker, broker):
    start_worker("control")
    WorkerHost.objects.create(hostname="gpu@real", queues=["gpu"], capabilities={}, version="celery", pid=1)
    url = settings.SANDBOX_BROKER_URL or settings.CELERY_BROKER_URL
    # A Celery task message (what a host would send to reach a control task directly).
    from project.celery import app

    route = queues.sandbox_reports_route(url)
    reports_queue = Queue(queues.SANDBOX_REPORTS, Exchange(route["exchange"]), routing_key=route["routing_key"])
    # As a host would connect (the project's queue key separator and priorities), at priority 0:
    # the sandbox user may write `sandbox_reports` and its `sandbox_reports:1-9` priority lists only.
    with Connection(url, transport_options=app.conf.broker_transport_options) as conn:
        app.send_task("jobs.reap", connection=conn, queue=reports_queue, declare=[], priority=0)
    publish_reports(
        url,
        reports.report_body(reports.HOST, ["gpu@evil", "ready", ["gpu"], {}, "celery", 1], None),
        reports.report_body(reports.HOST, ["gpu@real", "stopped", [], {}, "", 0], None),
        reports.report_body(reports.HOST, ["sandbox@fine", "ready", ["sandbox"], {}, "celery", 1], None),
    )
    wait_for(lambda: WorkerHost.objects.filter(hostname="sandbox@fine").exists(), 30, "the true host report")
    wait_for(
        lambda: AuditEvent.objects.filter(action=services.sandbox_runs.REFUSED_ACTION).count() == 3,
        30,
        "three refusals",
    )
    reasons = sorted(
        (d["report"], d["reason"], d.get("worker", ""))
        for d in AuditEvent.objects.filter(action=services.sandbox_runs.REFUSED_ACTION).values_list(
            "details", flat=True
        )
    )
    assert reasons == [
        ("None", "unknown_report", ""),
        ("host", "not_a_sandbox_host", "gpu@evil"),
        ("host", "not_a_sandbox_host", "gpu@real"),
    ]
    assert not WorkerHost.objects.filter(hostname="gpu@evil").exists()
    assert WorkerHost.objects.get(hostname="gpu@real").stopped_at is None


# --- RabbitMQ: the same denials through a user's permissions ------------------------------------

# What docs/operations.md, "Sandbox hosts" tells operators to grant (configure, write, read).
RABBITMQ_SANDBOX_PERMISSIONS = (
    r"^(sandbox|celery\.pidbox|sandbox.*\.celery\.pidbox)$",
    r"^(sandbox|sandbox_reports|sandbox.*\.celery\.pidbox)$",
    r"^(sandbox|celery\.pidbox|sandbox.*\.celery\.pidbox)$",
)


def rabbitmqctl(*args) -> subprocess.CompletedProcess:
    return subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=60)


def rabbitmqctl_works() -> bool:
    if not os.environ.get("RABBITMQ_URL") or shutil.which("rabbitmqctl") is None:
        return False
    try:
        return rabbitmqctl("status").returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@pytest.mark.broker
@pytest.mark.skipif(
    not rabbitmqctl_works(), reason="needs RABBITMQ_URL and a working rabbitmqctl on this machine (a local RabbitMQ)"
)
def test_a_rabbitmq_sandbox_user_cannot_publish_to_control_or_cpu_nor_read_them():
    from amqp.exceptions import AccessRefused

    admin_url = urlsplit(os.environ["RABBITMQ_URL"])
    vhost = f"switchyard-acl-{uuid.uuid4().hex[:8]}"
    user, password = f"sandbox-{uuid.uuid4().hex[:8]}", secrets.token_urlsafe(16)
    assert rabbitmqctl("add_vhost", vhost).returncode == 0
    try:
        assert rabbitmqctl("set_permissions", "-p", vhost, admin_url.username, ".*", ".*", ".*").returncode == 0
        assert rabbitmqctl("add_user", user, password).returncode == 0
        assert rabbitmqctl("set_permissions", "-p", vhost, user, *RABBITMQ_SANDBOX_PERMISSIONS).returncode == 0
        host = f"{admin_url.hostname}:{admin_url.port or 5672}"
        admin = f"amqp://{admin_url.username}:{quote(admin_url.password or '', safe='')}@{host}/{quote(vhost, safe='')}"
        sandbox = f"amqp://{user}:{quote(password, safe='')}@{host}/{quote(vhost, safe='')}"
        declared = {q.name: q for q in queues.TASK_QUEUES}
        with Connection(admin) as conn:
            for queue in (*queues.TASK_QUEUES, queues.sandbox_reports_queue()):
                queue(conn.default_channel).declare()
            conn.Producer().publish({"secret": 1}, exchange="", routing_key=queues.CONTROL)

        def refused(action) -> bool:
            with Connection(sandbox) as conn:
                try:
                    action(conn)
                except AccessRefused:
                    return True
                # A publish is refused asynchronously: the broker closes the channel; a round trip shows it.
                try:
                    conn.default_channel.basic_qos(0, 1, False)
                except AccessRefused:
                    return True
            return False

        for name in (queues.CONTROL, queues.CPU, queues.GPU):
            # Through the default exchange (by queue name) and through the queue's own exchange.
            assert refused(lambda c, n=name: c.Producer().publish({"x": 1}, exchange="", routing_key=n))
            assert refused(lambda c, n=name: c.Producer().publish({"x": 1}, exchange=n, routing_key=n))
            assert refused(lambda c, n=name: c.default_channel.basic_get(n))
            assert refused(lambda c, n=name: declared[n](c.default_channel).declare())
        assert refused(lambda c: c.default_channel.basic_get(queues.SANDBOX_REPORTS))
        # What it may do: consume `sandbox`, publish reports through their exchange.
        assert not refused(lambda c: declared[queues.SANDBOX](c.default_channel).declare())
        assert not refused(lambda c: c.default_channel.basic_get(queues.SANDBOX))
        assert not refused(lambda c: c.Producer().publish({"r": 1}, **queues.sandbox_reports_route(sandbox)))
        with Connection(admin) as conn:
            assert conn.default_channel.basic_get(queues.SANDBOX_REPORTS, no_ack=True) is not None
            message = conn.default_channel.basic_get(queues.CONTROL, no_ack=True)
            assert message is not None and json.loads(message.body) == {"secret": 1}
            assert conn.default_channel.basic_get(queues.CONTROL, no_ack=True) is None
        # And these permissions are enough for a sandbox worker: it starts, runs a run, reports it.
        worker = WorkerProcess(
            "sandbox", app="workers.sandbox.app", broker_only=True, env={"CELERY_BROKER_URL": sandbox}
        )
        seen: list[list] = []

        def reported(kind: str) -> bool:
            with Connection(admin) as conn:
                while (message := conn.default_channel.basic_get(queues.SANDBOX_REPORTS, no_ack=True)) is not None:
                    seen.append(json.loads(json.loads(message.body)["payload"]))
            return any(args[0] == kind for args in seen)

        worker.start(ready=lambda: reported(reports.HOST))
        try:
            from project.celery import app

            job_id, task_id = str(uuid.uuid4()), str(uuid.uuid4())
            token = services.sandbox_run_token(job_id=job_id, task_id=task_id)
            with Connection(admin) as conn:
                app.send_task(
                    "sandbox.execute",
                    args=[job_id, {"source": "print(6 * 7)"}, token],
                    task_id=task_id,
                    queue=queues.direct_queue(queues.SANDBOX),
                    connection=conn,
                )
            wait_for(lambda: reported(reports.FINISHED), 60, f"no outcome:\n{worker.log()[-3000:]}")
        finally:
            worker.stop()
        outcome = next(args for args in seen if args[0] == reports.FINISHED)[4]
        assert (outcome["verdict"], outcome["stdout"]) == ("ok", "42\n")
        assert "AccessRefused" not in worker.log() and "ACCESS_REFUSED" not in worker.log()
    finally:
        rabbitmqctl("delete_user", user)
        rabbitmqctl("delete_vhost", vhost)


@needs_redis_sandbox_user
def test_stale_sandbox_deliveries_are_dropped_by_the_reaper_never_put_back_with_full_rights(broker):
    from apps.jobs.services.dispatch import sandbox_stale_deliveries_drop

    sandbox = redis_as(settings.SANDBOX_BROKER_URL)
    admin = redis_as(settings.CELERY_BROKER_URL)
    keys = queues.SANDBOX_UNACKED_KEYS
    # What a hostile sandbox host can plant: an "in-flight" message that, put back, would go to `control`.
    planted = json.dumps([{"body": "forged", "properties": {}}, "", queues.CONTROL])
    sandbox.hset(keys["unacked_key"], "old-tag", planted)
    sandbox.zadd(keys["unacked_index_key"], {"old-tag": time.time() - queues.VISIBILITY_TIMEOUT_S - 60})
    sandbox.hset(keys["unacked_key"], "fresh-tag", planted)
    sandbox.zadd(keys["unacked_index_key"], {"fresh-tag": time.time()})
    try:
        assert sandbox_stale_deliveries_drop() == 1
        assert admin.hkeys(keys["unacked_key"]) == [b"fresh-tag"]
        assert admin.llen(queues.CONTROL) == 0
    finally:
        admin.delete(keys["unacked_key"], keys["unacked_index_key"])
