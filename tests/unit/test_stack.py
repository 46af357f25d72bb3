"""apps/core/stack.py and the Procfile: the URLs `make run` serves, supervisord's configuration, per-stack paths."""

import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from apps.core import stack

REPO = Path(__file__).resolve().parents[2]


def _env(monkeypatch, **values):
    for name in ("WEB_BIND", "FLOWER_ADDRESS", "FLOWER_PORT", "FLOWER_URL", "SWITCHYARD_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    for name, value in values.items():
        monkeypatch.setenv(name, value)


def test_urls_follow_web_bind_and_flower_address_and_port(monkeypatch):
    _env(monkeypatch)
    assert stack.web_url() == "http://127.0.0.1:8000" and stack.flower_url() == "http://127.0.0.1:5555"
    _env(monkeypatch, WEB_BIND="127.0.0.1:18000", FLOWER_ADDRESS="10.0.0.5", FLOWER_PORT="15555")
    assert stack.web_url() == "http://127.0.0.1:18000" and stack.flower_url() == "http://10.0.0.5:15555"
    # Every interface: a browser on this machine uses loopback.
    _env(monkeypatch, WEB_BIND="0.0.0.0:9000", FLOWER_ADDRESS="0.0.0.0")  # noqa: S104
    assert stack.web_url() == "http://127.0.0.1:9000" and stack.flower_url() == "http://127.0.0.1:5555"
    assert (
        stack.web_url("[::1]:8080") == "http://[::1]:8080" and stack.web_url("unix:/run/w.sock") == "unix:/run/w.sock"
    )
    _env(monkeypatch, WEB_BIND="127.0.0.1:18000", FLOWER_PORT="15555")
    assert "http://127.0.0.1:18000" in stack.banner() and "http://127.0.0.1:15555" in stack.banner()


def _flower_url_setting(**env) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")}
    return subprocess.run(
        [sys.executable, "-c", "from django.conf import settings; print(settings.FLOWER_URL)"],
        cwd=REPO,
        env={**clean, "DJANGO_SETTINGS_MODULE": "project.settings.test", **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def test_the_admins_flower_links_follow_flower_port_unless_flower_url_is_set():
    assert _flower_url_setting() == "http://127.0.0.1:5555"
    assert _flower_url_setting(FLOWER_PORT="15999") == "http://127.0.0.1:15999"
    assert _flower_url_setting(FLOWER_PORT="15999", FLOWER_URL="https://flower.example") == "https://flower.example"


def test_supervisord_reads_the_procfile_as_the_shell_would_with_one_group(tmp_path):
    from supervisor.datatypes import RestartUnconditionally
    from supervisor.options import ServerOptions

    processes = stack.read_procfile(REPO / "Procfile")
    assert {"web", "worker-cpu", "worker-gpu", "worker-sandbox", "worker-control", "beat", "flower"} <= set(processes)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = tmp_path / "supervisord.conf"
    config.write_text(stack.supervisord_config(processes, run_dir=run_dir))

    options = ServerOptions()
    options.realize(args=["-c", str(config)])
    (group,) = options.process_group_configs
    assert group.name == stack.GROUP
    programs = {program.name: program for program in group.process_configs}
    assert set(programs) == set(processes)
    cpu = programs["worker-cpu"]
    # One shell that execs the Procfile line: supervisord watches celery itself, `%h` reaches celery intact.
    assert cpu.command.startswith("/bin/sh -c ") and "exec celery " in cpu.command and "cpu-$$@%h" in cpu.command
    assert cpu.autorestart is RestartUnconditionally and cpu.stopasgroup and cpu.killasgroup
    assert programs["beat"].stopsignal == 2  # SIGINT: beat's clean stop
    assert options.serverurl == f"unix://{run_dir / 'supervisor.sock'}"


def _expand(line: str, **env) -> str:
    """A Procfile line as `sh -c 'exec LINE'` would run it, printed instead of run."""
    return subprocess.run(
        ["/bin/sh", "-c", f"printf '%s ' {line}"],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
    ).stdout


def test_worker_node_names_are_unique_per_process_and_runtime_files_are_per_stack(tmp_path, monkeypatch):
    processes = stack.read_procfile(REPO / "Procfile")
    for name, queue in (("worker-cpu", "cpu"), ("worker-gpu", "gpu"), ("worker-sandbox", "sandbox")):
        # `$$` is the shell's pid, which `exec` hands to celery: two processes, two names.
        assert f"-n {queue}-$$@%h" in processes[name]
    first, second = _expand(processes["worker-control"]), _expand(processes["worker-control"])
    assert "-n control-" in first and first != second

    assert f"--schedule={tmp_path}/celerybeat-schedule" in _expand(processes["beat"], SWITCHYARD_DATA_DIR=str(tmp_path))
    assert "--schedule=.data/celerybeat-schedule" in _expand(processes["beat"])

    _env(monkeypatch, SWITCHYARD_DATA_DIR=str(tmp_path))
    monkeypatch.delenv("GUNICORN_CONTROL_SOCKET", raising=False)
    gunicorn = runpy.run_path(str(REPO / "project" / "gunicorn.conf.py"))
    assert gunicorn["control_socket"] == str(tmp_path / "run" / "gunicorn.ctl")
    monkeypatch.setenv("FLOWER_BASIC_AUTH", "a:b")
    monkeypatch.delenv("FLOWER_DB", raising=False)
    flower = runpy.run_path(str(REPO / "project" / "flowerconfig.py"))
    assert flower["db"] == str(tmp_path / "flower.db")


@pytest.mark.parametrize("bad", ["no colon here", ": missing name", "web:"])
def test_a_malformed_procfile_line_is_named(tmp_path, bad):
    procfile = tmp_path / "Procfile"
    procfile.write_text(f"# comment\n\n{bad}\n")
    with pytest.raises(ValueError, match="Procfile:3"):
        stack.read_procfile(procfile)


def test_the_procfiles_sandbox_worker_connects_as_the_sandbox_broker_user_of_the_embedded_redis(monkeypatch):
    from apps.core import devservices

    line = stack.read_procfile(stack.REPO_ROOT / "Procfile")["worker-sandbox"]
    # `env -i` gives the worker nothing but these; its broker URL is the sandbox user's when there is one.
    env_part = line.split(" celery ", 1)[0]
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    monkeypatch.delenv("SANDBOX_BROKER_URL", raising=False)
    variables = devservices.environment()
    assert variables["SANDBOX_BROKER_URL"].startswith(f"redis://{devservices.SANDBOX_BROKER_USER}:")
    shown = subprocess.run(
        ["/bin/sh", "-c", f"{env_part} /usr/bin/env"],
        env={"PATH": os.environ["PATH"], **variables},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert f"CELERY_BROKER_URL={variables['SANDBOX_BROKER_URL']}" in shown
    # A configured broker gives no sandbox URL unless the operator sets one (docs/operations.md, "Sandbox hosts").
    monkeypatch.setenv("CELERY_BROKER_URL", "amqp://guest:guest@rabbit//")
    assert "SANDBOX_BROKER_URL" not in devservices.environment()
