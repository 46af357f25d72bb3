import os
import subprocess
import sys

from django.conf import settings
from django.conf import settings as django_settings

REPO_ROOT = django_settings.BASE_DIR


def _manage(*args, settings_module: str, **env_overrides) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in {"DEBUG", "SECRET_KEY", "ALLOWED_HOSTS"}}
    env.update({"DJANGO_SETTINGS_MODULE": settings_module, **env_overrides})
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def test_debug_is_off_unless_asked_for():
    result = _manage(
        "shell",
        "-c",
        "from django.conf import settings; print(settings.DEBUG)",
        settings_module="project.settings.local",
    )
    assert result.stdout.strip().splitlines()[-1] == "False", result.stderr


def test_development_secret_is_generated_under_data_not_in_the_repo():
    from apps.core import devservices

    secret_file = devservices.DATA_DIR / "secret_key"  # .data/ unless SWITCHYARD_DATA_DIR moves it
    assert devservices.DATA_DIR.is_relative_to(REPO_ROOT) or "SWITCHYARD_DATA_DIR" in os.environ
    assert secret_file.exists()
    assert secret_file.read_text().strip() == settings.SECRET_KEY
    tracked = subprocess.run(["git", "grep", "-l", settings.SECRET_KEY], cwd=REPO_ROOT, capture_output=True, text=True)
    assert tracked.stdout == ""


def test_check_deploy_is_clean_with_production_settings():
    result = _manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        settings_module="project.settings.production",
        SECRET_KEY="x" * 30 + "production-like-secret-0123456789abcdef",
        ALLOWED_HOSTS="switchyard.example.com",
        DATABASE_URL="postgres://u:p@db.example.com:5432/switchyard",
        CELERY_BROKER_URL="redis://broker.example.com:6379/0",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_production_settings_refuse_to_start_without_a_secret_key():
    result = _manage(
        "check",
        settings_module="project.settings.production",
        DATABASE_URL="postgres://u:p@db.example.com:5432/switchyard",
        CELERY_BROKER_URL="redis://broker.example.com:6379/0",
        ALLOWED_HOSTS="switchyard.example.com",
    )
    assert result.returncode != 0
    assert "SECRET_KEY" in result.stderr


def test_celery_is_configured_for_the_job_contract():
    from project.celery import app

    conf = app.conf
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.accept_content == ["json"] and conf.task_serializer == "json"
    assert {q.name for q in conf.task_queues} == {"cpu", "gpu", "sandbox", "control"}
    assert conf.broker_transport_options["visibility_timeout"] > conf.task_time_limit
    assert conf.broker_connection_retry_on_startup is True


def _requirement_names(path) -> set[str]:
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line.startswith("-r "):
            names |= _requirement_names(path.parent / line[3:].strip())
        elif line:
            names.add(line.split("==")[0].lower())
    return names


def test_onnxruntime_and_onnxruntime_gpu_are_never_installed_together():
    for name in ("base.txt", "dev.txt", "gpu.txt"):
        names = _requirement_names(REPO_ROOT / "requirements" / name)
        assert not {"onnxruntime", "onnxruntime-gpu"} <= names, name
    assert "onnxruntime-gpu" in _requirement_names(REPO_ROOT / "requirements" / "gpu.txt")
    assert "onnxruntime" in _requirement_names(REPO_ROOT / "requirements" / "base.txt")


def test_every_requirement_is_pinned():
    for path in (REPO_ROOT / "requirements").glob("*.txt"):
        for line in path.read_text().splitlines():
            line = line.split("#")[0].strip()
            if line and not line.startswith("-r "):
                assert "==" in line, f"{path.name}: {line} is not pinned"
