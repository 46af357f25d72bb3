"""Which queue a job runs on: the rule for gpu or cpu, used at submit and again while a job waits.

A kind that prefers a GPU asks `gpu_if_available()` in its `pick_queue`; the reaper asks the
kind again for jobs still queued on `gpu` once no live gpu host is left
(apps.jobs.services.housekeeping), so a job never waits for a GPU that is gone when the
kind would run it on a CPU.
"""

from project import queues

GPU_PROVIDER = "CUDAExecutionProvider"


def gpu_available() -> bool:
    """Whether a live worker consumes `gpu` with a CUDA provider (a gpu host without one runs nothing faster)."""
    from apps.jobs.selectors import live_worker_hosts

    return any(GPU_PROVIDER in host.capabilities.get("providers", []) for host in live_worker_hosts(queue=queues.GPU))


def gpu_if_available() -> str:
    return queues.GPU if gpu_available() else queues.CPU
