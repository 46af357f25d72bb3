"""docker/: compose names every service of a deployment; the image builds its Python layer from requirements/."""

import re
import shlex
from pathlib import Path

import pytest
import yaml

from project.queues import QUEUE_NAMES

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def services() -> dict:
    return yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())["services"]


def test_compose_names_every_service_of_a_deployment(services):
    required = {"postgres", "redis", "web", "beat", "flower", *(f"worker-{queue}" for queue in QUEUE_NAMES)}
    assert required <= set(services), required - set(services)
    assert services["postgres"]["image"].startswith("pgvector/pgvector:")
    for name in ("web", "beat", "flower", *(f"worker-{queue}" for queue in QUEUE_NAMES)):
        assert services[name]["build"]["dockerfile"] == "docker/Dockerfile", name


@pytest.mark.parametrize("queue", QUEUE_NAMES)
def test_one_worker_per_queue_consumes_exactly_that_queue(services, queue):
    command = _celery_command(services[f"worker-{queue}"]["command"])
    assert command[command.index("-Q") + 1] == queue
    assert command[command.index("-n") + 1].startswith(f"{queue}@")


def _celery_command(command) -> list[str]:
    """The celery command line, also where a shell runs it after some set-up (`sh -c '... exec celery ...'`)."""
    if command[:2] == ["sh", "-c"]:
        words = command[2].split()
        return words[words.index("celery") :]
    return command


def test_the_gpu_worker_reserves_an_nvidia_gpu_and_installs_the_gpu_requirements(services):
    gpu = services["worker-gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert gpu["build"]["args"]["REQUIREMENTS"] == "gpu.txt" and (ROOT / "requirements" / "gpu.txt").exists()
    assert "--concurrency=1" in gpu["command"]


def test_the_sandbox_worker_gets_the_broker_and_nothing_else(services):
    sandbox = services["worker-sandbox"]
    # The broker, and where its delegated cgroup is: no database URL, no secret key.
    assert set(sandbox["environment"]) == {"CELERY_BROKER_URL", "SANDBOX_CGROUP"}
    assert sandbox["volumes"] == [], "no media volume: the sandbox host sees no other job's files"
    assert _celery_command(sandbox["command"])[:3] == ["celery", "-A", "workers.sandbox.app"]
    assert "privileged" not in sandbox
    # SYS_ADMIN only for the one remount of its own cgroup, dropped from the bounding set
    # before the worker starts, so neither the worker nor any program it runs holds it.
    assert sandbox.get("cap_add", []) in ([], ["SYS_ADMIN"])
    if sandbox.get("cap_add"):
        script = sandbox["command"][2]
        assert script.index("setpriv --bounding-set -sys_admin") < script.index("celery")


def test_the_sandbox_worker_connects_as_the_redis_sandbox_user_with_the_projects_acl_rules(services):
    from project.queues import sandbox_redis_acl

    assert services["worker-sandbox"]["environment"]["CELERY_BROKER_URL"].startswith(
        "${SANDBOX_BROKER_URL:-redis://sandbox:"
    )
    command = services["redis"]["command"]
    user = command[command.index("--user") + 1 :]
    assert user[:4] == ["sandbox", "on", ">${SANDBOX_BROKER_PASSWORD:?set SANDBOX_BROKER_PASSWORD}", "resetchannels"]
    assert user[4:] == sandbox_redis_acl()


def test_flower_is_authenticated_and_keeps_its_state_on_a_volume(services):
    flower = services["flower"]
    assert "--conf=project/flowerconfig.py" in flower["command"]
    assert "FLOWER_BASIC_AUTH" in flower["environment"]
    assert flower["environment"]["FLOWER_DB"].startswith("/data/flower/")
    assert any(volume.endswith(":/data/flower") for volume in flower["volumes"])
    # Flower treats every FLOWER_* variable as one of its options and exits on an unknown one.
    assert not [
        key
        for key in flower["environment"]
        if key.startswith("FLOWER_") and key not in ("FLOWER_BASIC_AUTH", "FLOWER_DB")
    ]


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "docker" / "Dockerfile").read_text()
    text = re.sub(r"^\s*#.*\n", "", text, flags=re.MULTILINE).replace("\\\n", " ")
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in text.splitlines() if line.strip()]


def test_dockerfile_builds_the_python_layer_from_requirements_in_its_own_stage():
    instructions = dockerfile_instructions()
    stages = [args for op, args in instructions if op == "FROM"]
    assert len(stages) >= 2 and stages[0].endswith("AS build") and stages[-1].endswith("AS runtime")
    build = instructions[: next(i for i, (op, args) in enumerate(instructions) if op == "FROM" and "runtime" in args)]
    copies = [args for op, args in build if op == "COPY"]
    assert copies == ["requirements/ requirements/"], (
        "only requirements/ reaches the build stage, so code edits keep its cache"
    )
    default = next(args.split("=", 1)[1] for op, args in build if op == "ARG" and args.startswith("REQUIREMENTS="))
    assert (ROOT / "requirements" / default).exists()
    assert any(
        op == "RUN" and "pip install" in args and "-r requirements/${REQUIREMENTS}" in args for op, args in build
    )


def test_dockerfile_runs_as_a_non_root_user():
    instructions = dockerfile_instructions()
    runtime = instructions[next(i for i, (op, args) in enumerate(instructions) if op == "FROM" and "runtime" in args) :]
    assert ("COPY", "--from=build /opt/venv /opt/venv") in runtime
    users = [args for op, args in runtime if op == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert any(op == "RUN" and "useradd" in args and users[-1] in args for op, args in runtime)
    cmd = next(args for op, args in reversed(runtime) if op == "CMD")
    assert "gunicorn" in cmd


def test_dockerignore_keeps_local_state_out_of_the_image():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line and line[0] != "#"}
    assert {".git", ".venv", ".data"} <= ignored


def test_procfile_flower_uses_the_same_flower_config():
    flower = next(line for line in (ROOT / "Procfile").read_text().splitlines() if line.startswith("flower:"))
    assert "--conf=project/flowerconfig.py" in shlex.split(flower.split(":", 1)[1])
