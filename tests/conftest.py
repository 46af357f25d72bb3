import pytest

from tests.workers import WorkerProcess


@pytest.fixture
def broker():
    """The real broker connection, with the test queues purged before and after."""
    from project.celery import app
    from project.queues import QUEUE_NAMES

    def purge():
        with app.connection_for_write() as conn:
            channel = conn.default_channel
            for name in QUEUE_NAMES:
                channel.queue_declare(name, passive=False, durable=True, auto_delete=False)
                channel.queue_purge(name)

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
