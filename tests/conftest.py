import pytest

from tests.workers import WorkerProcess


@pytest.fixture
def broker():
    """The real broker connection, with the test queues purged before and after."""
    from project.celery import app
    from project.queues import TASK_QUEUES

    def purge():
        with app.connection_for_write() as conn:
            for queue in TASK_QUEUES:
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
