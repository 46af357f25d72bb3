import pytest
from django.core.cache import cache

from apps.core.worker_process import WorkerProcess

# Tests using these fixtures talk to the broker; `make test-rabbitmq` runs them (-m broker)
# a second time against RabbitMQ.
BROKER_FIXTURES = {"broker", "start_worker", "queue_depth"}
# Modules whose subject is a job kind or a surface, not the broker: their workers only carry
# jobs, which the contract, scheduling, sandbox, chaos and Flower tests prove on both brokers.
# They run once, on the default broker, to keep CI's second pass short.
RUN_ON_ONE_BROKER = {
    "test_backend_conformance_jobs",
    "test_browser",
    "test_cli",
    "test_cli_output",
    "test_compile_jobs",
    "test_inference_jobs",
    "test_log_context",
    "test_make_run",
    "test_memory_import",
    "test_simulations",
}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        # Schemathesis's items (one per API operation, named `test[GET /api/v1/]`) all get the id of
        # their function under pytest 9; pytest-xdist schedules by id and ran one of the 65. Each
        # gets its operation back as its id's parameters (pytest has no public way to set them).
        name, bracket, params = item.name.partition("[")
        if bracket and item.nodeid.endswith(f"::{name}"):
            item._id = item._id.with_params(params.removesuffix("]"))
        if item.module.__name__.rsplit(".", 1)[-1] in RUN_ON_ONE_BROKER or item.get_closest_marker("one_broker"):
            continue
        if BROKER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.broker)


@pytest.fixture
def broker():
    """The real broker connection, with the test queues purged before and after."""
    from project.celery import app
    from project.queues import TASK_QUEUES, sandbox_reports_queue

    def purge():
        with app.connection_for_write() as conn:
            for queue in (*TASK_QUEUES, sandbox_reports_queue()):
                bound = queue(conn.default_channel)
                bound.declare()
                bound.purge()

    purge()
    yield app
    purge()


@pytest.fixture
def start_worker(transactional_db, broker):
    """Start real worker processes; every one is stopped at teardown."""
    started: list[WorkerProcess] = []

    def start(queues: str = "cpu", **kwargs) -> WorkerProcess:
        worker = WorkerProcess(queues, **kwargs).start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
def queue_depth(broker):
    """Messages waiting in a broker queue (all priority levels)."""

    def depth(name: str) -> int:
        from project.queues import TASK_QUEUES

        queue = next(q for q in TASK_QUEUES if q.name == name)
        with broker.connection_for_write() as conn:
            return queue(conn.default_channel).queue_declare().message_count

    return depth


@pytest.fixture
def member():
    """Make a membership with a role, and an API client authenticated as it by token."""
    from rest_framework.test import APIClient

    from apps.accounts.services import api_token_create
    from tests.factories import MembershipFactory

    def make(role: str = "developer", organization=None):
        kwargs = {"role": role}
        if organization is not None:
            kwargs["organization"] = organization
        membership = MembershipFactory(**kwargs)
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {api_token_create(membership=membership, name='t').plaintext}")
        return membership, client

    return make


@pytest.fixture(autouse=True)
def _empty_cache():
    """Throttle counters from one test must not spend another test's budget."""
    from apps.accounts import throttling

    cache.clear()
    throttling.reset()


@pytest.fixture(autouse=True)
def _responses_match_the_schema(monkeypatch):
    """Every API answer a test receives must be what /api/schema/ documents (tests/contract.py)."""
    from rest_framework.test import APIClient

    from tests.contract import check_response

    original = APIClient.request

    def request(self, **kwargs):
        response = original(self, **kwargs)
        check_response(kwargs.get("REQUEST_METHOD", "GET"), kwargs.get("PATH_INFO", ""), response)
        return response

    monkeypatch.setattr(APIClient, "request", request)


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3-compatible server (moto's, over HTTP) for the whole session."""
    from tests.s3 import start_server

    server, endpoint = start_server()
    yield endpoint
    server.stop()


@pytest.fixture
def s3_storage(s3_endpoint, settings, tmp_path, monkeypatch):
    """This process keeps its files in a fresh S3 bucket, with its own empty MEDIA_ROOT and host cache."""
    from tests.s3 import CREDENTIALS, new_bucket

    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    bucket = new_bucket(s3_endpoint)
    settings.ARTIFACT_STORAGE_URL = bucket.url
    settings.STORAGES = {**settings.STORAGES, "default": bucket.storage}
    settings.MEDIA_ROOT = str(tmp_path / "web-media")
    settings.ARTIFACT_CACHE_DIR = tmp_path / "web-cache"
    return bucket
