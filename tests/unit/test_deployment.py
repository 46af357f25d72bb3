"""docker/: compose names every service of a deployment; the image builds its Python layer from requirements/."""

import json
import os
import re
import shlex
import shutil
import subprocess
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


# --- `docker compose config` without Docker ----------------------------------------------------
# No Docker engine or compose CLI can be installed here (Debian's docker-compose is v1 and rejects
# the Compose Specification's `cgroup` and `configs.content`). What `docker compose config`
# checks is done the same way: interpolate the variables, merge the YAML anchors, validate against
# the Compose Specification's own JSON schema (docker/compose-spec.json, vendored from
# github.com/compose-spec/compose-spec). Where `docker compose` is installed, it runs as well.

COMPOSE_ENV = {
    "POSTGRES_PASSWORD": "pg-secret",
    "REDIS_PASSWORD": "redis-secret",
    "SECRET_KEY": "a-secret-key",
    "FLOWER_BASIC_AUTH": "admin:secret",
    "SANDBOX_BROKER_PASSWORD": "sandbox-secret",
    "AWS_ACCESS_KEY_ID": "objects-user",
    "AWS_SECRET_ACCESS_KEY": "objects-secret",
}


class MissingVariable(Exception):
    pass


def interpolate(text: str, env: dict) -> str:
    """Compose's variable interpolation: $$, $VAR, ${VAR}, ${VAR:-x}, ${VAR-x}, ${VAR:?x}, ${VAR?x}, ${VAR:+x}."""
    value, _ = _interpolate(text, env, 0, stop=None)
    return value


def _interpolate(text: str, env: dict, i: int, stop: str | None) -> tuple[str, int]:
    out = []
    while i < len(text):
        char = text[i]
        if stop is not None and char == stop:
            return "".join(out), i
        if char != "$":
            out.append(char)
            i += 1
            continue
        following = text[i + 1 : i + 2]
        if following == "$":
            out.append("$")
            i += 2
        elif following == "{":
            name = re.match(r"[A-Za-z_][A-Za-z0-9_]*", text[i + 2 :]).group(0)
            i += 2 + len(name)
            operator = re.match(r":-|-|:\?|\?|:\+|\+|", text[i:]).group(0)
            word, i = _interpolate(text, env, i + len(operator), stop="}")
            i += 1  # the closing brace
            out.append(_substitute(name, operator, word, env))
        elif re.match(r"[A-Za-z_]", following):
            name = re.match(r"[A-Za-z_][A-Za-z0-9_]*", text[i + 1 :]).group(0)
            out.append(env.get(name, ""))
            i += 1 + len(name)
        else:
            out.append("$")
            i += 1
    return "".join(out), i


def _substitute(name: str, operator: str, word: str, env: dict) -> str:
    value = env.get(name)
    unset_or_empty = not value
    if operator in (":-", "-"):
        return word if (unset_or_empty if operator == ":-" else value is None) else value
    if operator in (":?", "?"):
        if unset_or_empty if operator == ":?" else value is None:
            raise MissingVariable(f"required variable {name} is missing a value: {word}")
        return value
    if operator in (":+", "+"):
        return word if not (unset_or_empty if operator == ":+" else value is None) else ""
    return value or ""


def compose_config(env: dict) -> dict:
    """docker/compose.yaml as `docker compose config` resolves it (anchors merged, variables in)."""
    return yaml.safe_load(interpolate((ROOT / "docker" / "compose.yaml").read_text(), env))


def test_compose_interpolation_follows_the_specification():
    env = {"SET": "v", "EMPTY": ""}
    assert interpolate("$$HOME ${SET} $SET ${UNSET:-d} ${EMPTY:-d} ${EMPTY-d} ${SET:+alt} ${UNSET+alt}", env) == (
        "$HOME v v d d  alt "
    )
    assert interpolate("${UNSET:-redis://:${SET:?need SET}@redis}", env) == "redis://:v@redis"
    with pytest.raises(MissingVariable, match=r"EMPTY.*need it"):
        interpolate("${EMPTY:?need it}", env)


def test_compose_file_is_valid_under_the_compose_specification():
    import jsonschema

    schema = json.loads((ROOT / "docker" / "compose-spec.json").read_text())
    config = compose_config(COMPOSE_ENV)
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(config), key=lambda e: list(e.path))
    assert not errors, [f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors]
    # Every `depends_on` names a service, every named volume and config is declared.
    for name, service in config["services"].items():
        assert set(service.get("depends_on", {})) <= set(config["services"]), name
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            assert source.startswith(("/", ".")) or source in config["volumes"], (name, volume)
        for used in service.get("configs", []):
            assert used["source"] in config["configs"], (name, used)


def test_compose_refuses_to_start_without_its_secrets():
    for secret in COMPOSE_ENV:
        with pytest.raises(MissingVariable, match=secret):
            compose_config({key: value for key, value in COMPOSE_ENV.items() if key != secret})


def _docker_compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0


@pytest.mark.skipif(
    not _docker_compose_available(), reason="no `docker compose` here: the schema test above stands in for it"
)
def test_docker_compose_config_accepts_the_file():
    result = subprocess.run(
        ["docker", "compose", "-f", str(ROOT / "docker" / "compose.yaml"), "config", "--quiet"],
        env={**os.environ, **COMPOSE_ENV},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_compose_is_the_multi_host_reference_no_shared_volume_and_a_broker_only_sandbox():
    config = compose_config(COMPOSE_ENV)
    services = config["services"]
    # No named volume is mounted by two services: hosts share the network, never a folder.
    mounts: dict[str, list[str]] = {}
    for name, service in services.items():
        for volume in service.get("volumes", []):
            mounts.setdefault(volume.split(":", 1)[0], []).append(name)
    assert {volume: users for volume, users in mounts.items() if len(users) > 1} == {}
    # Every process with the database stores files in the object store, through its URL.
    for name in ("web", "migrate", "beat", "worker-cpu", "worker-gpu", "worker-control"):
        assert services[name]["environment"]["ARTIFACT_STORAGE_URL"].startswith("s3://"), name
    # The sandbox worker's one network holds the brokers and nothing else, with no way out.
    assert services["worker-sandbox"]["networks"] == ["sandbox-broker"]
    on_it = {name for name, service in services.items() if "sandbox-broker" in service.get("networks", [])}
    assert on_it == {"worker-sandbox", "redis", "rabbitmq"}
    assert config["networks"]["sandbox-broker"]["internal"] is True
    assert services["worker-sandbox"]["environment"]["CELERY_BROKER_URL"].startswith("redis://sandbox:")
