"""The sandbox executor against hostile programs: each gets its verdict, and the next run is clean."""

import contextlib
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from workers.sandbox import (
    BASE_UID,
    SYSTEM_MAXIMUM,
    VERDICTS,
    SandboxLimitError,
    SandboxLimits,
    SandboxRequest,
    SandboxRequestError,
    bwrap_available,
    run_sandbox,
    runner,
)

REPO = Path(__file__).resolve().parents[2]
# This test process's own slot, held host-wide (workers/sandbox/slots.py): no worker or other
# test run on this machine can run in it, so the sweeps and checks below see only our runs.
SLOT = runner.slots.process_slot()
SLOT_UID = BASE_UID + SLOT
SMALL = {
    "cpu_seconds": 1,
    "wall_seconds": 3,
    "memory_mb": 128,
    "processes": 32,
    "output_bytes": 10_000,
    "file_size_mb": 16,
    "tmpfs_mb": 8,
}
AVAILABLE, WHY = bwrap_available()
needs_bwrap = pytest.mark.skipif(not AVAILABLE, reason=f"sandbox unavailable: {WHY}")
# Root switches each run to the slot's uid; other users run the sandbox as themselves.
SWITCHES_UID = os.geteuid() == 0


def slot_processes(uid: int = SLOT_UID) -> list[int]:
    return [p.pid for p in psutil.process_iter(["uids"]) if p.info["uids"] and p.info["uids"].real == uid]


def run(source: str, slot: int = SLOT, files: dict | None = None, stdin: str = "", **limits):
    request = SandboxRequest(source=source, files=files or {}, stdin=stdin, limits=SandboxLimits(**{**SMALL, **limits}))
    return run_sandbox(request, slot=slot)


def run_hostile(source: str, files: dict | None = None, stdin: str = "", **limits):
    """Run `source`, then check that it left no process behind and that the slot still works."""
    result = run(source, files=files, stdin=stdin, **limits)
    assert result.verdict in VERDICTS
    if SWITCHES_UID:
        assert slot_processes() == []
    after = run("print(1)")
    assert (after.verdict, after.stdout, after.stderr) == ("ok", "1\n", "")
    return result


@needs_bwrap
def test_a_plain_program_runs_ok_and_reports_its_usage():
    result = run("print(1)")
    assert result.verdict == "ok"
    assert (result.exit_code, result.signal, result.timeout_kind) == (0, None, None)
    assert (result.stdout, result.stderr) == ("1\n", "")
    assert 0 < result.wall_seconds < 3
    # Peak memory is the sandboxed Python's, not the worker's (which is far bigger under pytest).
    assert 1 < result.peak_memory_mb < 60


@needs_bwrap
def test_cpu_and_memory_usage_count_the_program_not_bwrap():
    source = """
import time
x = bytearray(64 * 2**20)
started = time.process_time()
while time.process_time() - started < 0.3:
    pass
"""
    result = run(source)
    assert result.verdict == "ok"
    assert result.cpu_seconds >= 0.3
    assert 64 <= result.peak_memory_mb < 128


@needs_bwrap
def test_fork_bomb_is_bounded_and_leaves_no_process():
    source = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    started = time.monotonic()
    result = run_hostile(source)
    assert result.verdict in {"killed", "timeout", "runtime_error"}
    assert time.monotonic() - started < SMALL["wall_seconds"] + 4


@needs_bwrap
def test_memory_bomb_hits_the_memory_limit():
    result = run_hostile("chunks = []\nwhile True:\n    chunks.append(bytearray(16 * 2**20))\n")
    assert result.verdict == "memory_limit"
    assert "MemoryError" in result.stderr


TREE_LIMIT_OK, TREE_LIMIT_WHY = runner.cgroups.available()


@needs_bwrap
@pytest.mark.skipif(not TREE_LIMIT_OK, reason=f"no tree-wide memory limit here: {TREE_LIMIT_WHY}")
def test_processes_that_each_stay_under_the_limit_are_stopped_by_the_tree_limit():
    # Each child holds 100 MB, under the 128 MB per-process limit; four of them are not.
    source = (
        "import os, time\n"
        "for _ in range(4):\n"
        "    if os.fork() == 0:\n"
        "        block = bytearray(100 * 2**20)\n"
        "        for i in range(0, len(block), 4096):\n"
        "            block[i] = 1\n"
        "        time.sleep(2)\n"
        "        os._exit(0)\n"
        "for _ in range(4):\n"
        "    os.wait()\n"
        "print('all four held 100 MB')\n"
    )
    result = run_hostile(source)
    assert result.verdict == "memory_limit", (result.verdict, result.message, result.stdout)
    assert "together exceeded" in result.message


# The wall limit is far above the CPU limit in the CPU tests: on a loaded machine (2 busy
# processes per core) a busy loop gets a third of a core, and the CPU limit must still fire first.
CPU_TEST_WALL_S = 60


@needs_bwrap
def test_busy_loop_times_out_on_cpu():
    result = run_hostile("while True:\n    pass\n", wall_seconds=CPU_TEST_WALL_S)
    assert (result.verdict, result.timeout_kind) == ("timeout", "cpu"), (result.verdict, result.message)
    if TREE_LIMIT_OK:
        # The whole-tree watch stops it, on the clock it reports (RLIMIT_CPU is a second later).
        assert result.signal == "SIGKILL"
        assert SMALL["cpu_seconds"] <= result.cpu_seconds < SMALL["cpu_seconds"] + 1
    else:
        # RLIMIT_CPU's SIGXCPU; rusage and that clock differ, most on a loaded VM.
        assert result.signal == "SIGXCPU"
        assert 0.7 * SMALL["cpu_seconds"] < result.cpu_seconds < SMALL["cpu_seconds"] + 1


@needs_bwrap
def test_a_program_that_ignores_sigxcpu_is_killed_at_the_cpu_limit():
    source = "import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True:\n    pass\n"
    result = run_hostile(source, wall_seconds=CPU_TEST_WALL_S)
    assert (result.verdict, result.timeout_kind, result.signal) == ("timeout", "cpu", "SIGKILL")
    # Killed by the whole-tree watch at the limit, or by the hard RLIMIT_CPU a second later.
    assert SMALL["cpu_seconds"] * 0.95 <= result.cpu_seconds < SMALL["cpu_seconds"] + 1.5


@needs_bwrap
def test_a_program_killed_by_a_signal_is_killed():
    result = run_hostile("import os\nos.abort()\n")
    assert (result.verdict, result.signal, result.exit_code) == ("killed", "SIGABRT", None)


@needs_bwrap
def test_sleeping_past_the_wall_limit_times_out_on_wall():
    result = run_hostile("import time\nprint('before', flush=True)\ntime.sleep(60)\n")
    assert (result.verdict, result.timeout_kind) == ("timeout", "wall")
    assert result.stdout == "before\n"
    assert SMALL["wall_seconds"] <= result.wall_seconds < SMALL["wall_seconds"] + 1


@needs_bwrap
@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_output_flood_is_cut_at_the_limit(stream):
    result = run_hostile(f"import sys\nwhile True:\n    sys.{stream}.write('x' * 1000)\n")
    assert result.verdict == "output_limit"
    assert getattr(result, f"{stream}_truncated") is True
    assert getattr(result, stream) == "x" * SMALL["output_bytes"]


@needs_bwrap
def test_filling_the_tmpfs_fails_with_no_space_left():
    source = "with open('fill', 'wb') as f:\n    while True:\n        f.write(bytes(2**20))\n"
    result = run_hostile(source)
    assert result.verdict == "runtime_error"
    assert "No space left on device" in result.stderr


@needs_bwrap
def test_a_file_above_the_file_size_limit_fails():
    source = "with open('big', 'wb') as f:\n    for _ in range(4):\n        f.write(bytes(2**20))\n"
    result = run_hostile(source, file_size_mb=1)
    assert result.verdict == "runtime_error"
    assert "File too large" in result.stderr


@needs_bwrap
def test_database_broker_and_internet_are_unreachable():
    source = """
import socket
for host, port in [("127.0.0.1", 5432), ("127.0.0.1", 6379), ("1.1.1.1", 53)]:
    try:
        socket.create_connection((host, port), timeout=2)
        print(host, port, "connected")
    except OSError as error:
        print(host, port, "failed", error)
"""
    result = run_hostile(source)
    assert result.verdict == "ok"
    assert "connected" not in result.stdout
    assert result.stdout.count("failed") == 3
    assert "Connection refused" in result.stdout
    assert "Network is unreachable" in result.stdout


@needs_bwrap
def test_host_names_do_not_resolve():
    source = """
import socket
for name in ("example.com", "postgres", "redis"):
    try:
        print(name, socket.getaddrinfo(name, 443))
    except OSError as error:
        print(name, "failed", type(error).__name__)
"""
    result = run_hostile(source)
    assert result.verdict == "ok"
    assert result.stdout.count("failed gaierror") == 3


@needs_bwrap
def test_environment_secrets_do_not_reach_the_program(monkeypatch):
    secrets = {
        "SECRET_KEY": "fake-secret-key-4f1d",
        "DATABASE_URL": "postgres://user:fake-db-password-9c2e@db/switchyard",
        "CELERY_BROKER_URL": "redis://:fake-redis-password-77aa@redis:6379/0",
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    source = (
        "import json, os\nprint(json.dumps(dict(os.environ)))\n"
        "print(open('/proc/1/environ', 'rb').read())\nprint(open('/proc/self/environ', 'rb').read())\n"
    )
    result = run_hostile(source)
    assert result.verdict == "ok"
    environment = json.loads(result.stdout.splitlines()[0])
    # bwrap adds PWD for --chdir.
    allowed = {"PATH", "HOME", "LANG", "PWD", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED", "MALLOC_ARENA_MAX"}
    assert set(environment) <= allowed
    for name, value in secrets.items():
        assert name not in result.stdout
        assert value not in result.stdout


@needs_bwrap
def test_project_files_and_worker_home_are_invisible():
    paths = [str(REPO / "manage.py"), str(REPO), "/root", "/root/.bashrc", "/home", "/etc/passwd", "/tmp", "/var/run"]
    source = f"""
import os
for path in {paths!r}:
    try:
        print(path, "listed", os.listdir(path)) if os.path.isdir(path) else print(path, "read", open(path).read(50))
    except OSError as error:
        print(path, "failed", type(error).__name__)
"""
    result = run_hostile(source)
    assert result.verdict == "ok"
    lines = result.stdout.splitlines()
    assert len(lines) == len(paths)
    for line in lines:
        assert line.split()[1] == "failed", line
        assert line.split()[2] in {"FileNotFoundError", "PermissionError"}, line


@needs_bwrap
def test_proc_shows_only_the_sandbox_processes():
    source = "import json, os\nprint(json.dumps(sorted(int(p) for p in os.listdir('/proc') if p.isdigit())))\n"
    result = run_hostile(source)
    assert result.verdict == "ok"
    pids = json.loads(result.stdout)
    # bwrap's init and the program itself, numbered from 1 in their own pid namespace.
    assert pids == [1, 2]
    assert os.getpid() not in pids


@needs_bwrap
def test_the_program_runs_as_the_slot_uid_without_capabilities():
    source = (
        "import ctypes, os\nprint(os.getuid(), os.getgid(), os.getgroups())\n"
        "print(*sorted({line.split()[1] for line in open('/proc/self/status') if line.startswith('Cap')}))\n"
        "print('unshare', ctypes.CDLL(None).unshare(0x10000000))  # CLONE_NEWUSER\n"
    )
    result = run_hostile(source)
    assert result.verdict == "ok"
    ids, caps, unshare = result.stdout.splitlines()
    assert ids == f"{SLOT_UID} {SLOT_UID} []"
    assert caps == "0000000000000000"
    # No nested user namespace: the program cannot become root of one.
    assert unshare == "unshare -1"


@needs_bwrap
def test_the_system_is_read_only_and_only_work_is_writable():
    source = """
for path in ("/x", "/etc/x", "/dev/x", "/usr/x", "/code/main.py", "/work/x", "/dev/shm/x"):
    try:
        open(path, "a").write("x")
        print(path, "written")
    except OSError as error:
        print(path, "failed", type(error).__name__)
"""
    result = run_hostile(source)
    assert result.verdict == "ok"
    written = [line.split()[0] for line in result.stdout.splitlines() if line.endswith("written")]
    # /dev/shm points into /work, so it shares the tmpfs size limit.
    assert written == ["/work/x", "/dev/shm/x"]


@needs_bwrap
def test_subprocesses_run_within_the_process_limit():
    source = """
import subprocess, sys
print(subprocess.run([sys.executable, "-c", "print(2)"], capture_output=True, text=True).stdout.strip())
print(subprocess.run("echo shell", shell=True, capture_output=True, text=True).stdout.strip())
"""
    result = run_hostile(source)
    assert result.verdict == "ok"
    assert result.stdout == "2\nshell\n"


@needs_bwrap
def test_signalling_the_parent_and_the_worker_does_not_hurt_the_worker():
    source = f"""
import os, signal
os.kill(os.getppid(), signal.SIGKILL)
try:
    # Every process the program may signal; there is none but itself and init.
    os.kill(-1, signal.SIGKILL)
except ProcessLookupError:
    pass
try:
    os.kill({os.getpid()}, signal.SIGKILL)
    print("worker signalled")
except OSError as error:
    print("worker", type(error).__name__)
print("still here")
"""
    result = run_hostile(source)
    assert result.verdict == "ok"
    assert result.stdout == "worker ProcessLookupError\nstill here\n"


@needs_bwrap
def test_a_double_forked_orphan_does_not_outlive_the_run():
    source = """
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep(60)
    os._exit(0)
os.wait()
print("parent exits")
"""
    result = run_hostile(source)
    assert result.verdict == "ok"
    assert result.stdout == "parent exits\n"
    assert result.wall_seconds < 2
    if SWITCHES_UID:
        assert slot_processes() == []


@needs_bwrap
def test_stdin_and_files_reach_the_program():
    source = "import sys\nprint(sys.stdin.read().upper(), open('data.csv').read(), end='')\n"
    result = run_hostile(source, files={"data.csv": "a,b\n1,2\n"}, stdin="hello\n")
    assert result.verdict == "ok"
    assert result.stdout == "HELLO\n a,b\n1,2\n"


@needs_bwrap
def test_an_uncaught_exception_is_a_runtime_error_with_its_exit_code():
    result = run_hostile("import sys\nprint('partial')\nraise SystemExit(3)\n")
    assert (result.verdict, result.exit_code, result.stdout) == ("runtime_error", 3, "partial\n")
    result = run_hostile("1 / 0\n")
    assert (result.verdict, result.exit_code) == ("runtime_error", 1)
    assert "ZeroDivisionError" in result.stderr


@needs_bwrap
def test_a_bwrap_setup_failure_is_an_internal_error(monkeypatch):
    real_command = runner.bwrap_command

    def broken_command(**kwargs):
        argv = real_command(**kwargs)
        return [argv[0], "--ro-bind", "/nonexistent-switchyard", "/x", *argv[1:]]

    calls = []
    monkeypatch.setattr(runner, "bwrap_command", lambda **kwargs: calls.append(1) or broken_command(**kwargs))
    monkeypatch.setattr(runner, "SETUP_RETRY_PAUSE_S", 0.01)
    result = run("print(1)")
    assert (result.verdict, result.infrastructure_error) == ("internal_error", True)
    assert "bwrap failed to set up the sandbox" in result.message
    assert "nonexistent-switchyard" in result.message  # bwrap's own reason, shown
    assert result.stdout == ""
    assert len(calls) == runner.SETUP_ATTEMPTS


@needs_bwrap
@pytest.mark.parametrize("late_step", ["_limit_sandbox", "_release_sandbox"])
def test_bwrap_failing_before_the_worker_limits_or_releases_it_is_reported_with_bwraps_reason(monkeypatch, late_step):
    # On a busy host bwrap can fail its set-up before the worker sets the limits or writes the byte
    # that lets it go on: the process is gone or the pipe closed, which is bwrap's failure, not the
    # worker's, and the run must say what bwrap said.
    real_command, real_step = runner.bwrap_command, getattr(runner, late_step)

    def broken_command(**kwargs):
        argv = real_command(**kwargs)
        return [argv[0], "--ro-bind", "/nonexistent-switchyard", "/x", *argv[1:]]

    def late(process, run, *args, **kwargs):
        os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)  # bwrap has ended; not reaped
        return real_step(process, run, *args, **kwargs)

    monkeypatch.setattr(runner, "bwrap_command", broken_command)
    monkeypatch.setattr(runner, late_step, late)
    monkeypatch.setattr(runner, "SETUP_RETRY_PAUSE_S", 0.01)
    result = run("print(1)")
    assert (result.verdict, result.infrastructure_error) == ("internal_error", True)
    assert "nonexistent-switchyard" in result.message, result.message


@needs_bwrap
def test_a_transient_bwrap_setup_failure_is_retried_and_the_run_gets_its_verdict(monkeypatch):
    real_command = runner.bwrap_command
    calls = []

    def fails_once(**kwargs):
        calls.append(1)
        argv = real_command(**kwargs)
        return [argv[0], "--ro-bind", "/nonexistent-switchyard", "/x", *argv[1:]] if len(calls) == 1 else argv

    monkeypatch.setattr(runner, "bwrap_command", fails_once)
    monkeypatch.setattr(runner, "SETUP_RETRY_PAUSE_S", 0.01)
    result = run("print(1)")
    assert (result.verdict, result.stdout, result.infrastructure_error, len(calls)) == ("ok", "1\n", False, 2)


@needs_bwrap
def test_the_program_sees_its_rlimits_from_its_first_instruction_and_holds_exactly_its_processes():
    # The rlimits are set on bwrap's first process while it waits to fork the program
    # (runner._limit_sandbox), not before bwrap starts: the program and each child inherit them.
    source = """
import os, resource, time
names = ("RLIMIT_CPU", "RLIMIT_AS", "RLIMIT_FSIZE", "RLIMIT_CORE", "RLIMIT_NOFILE")
print(*(resource.getrlimit(getattr(resource, name)) for name in names))
processes = 1
while processes < 20:
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(5)
        os._exit(0)
    processes += 1
print(processes)
"""
    result = run_hostile(source, processes=5, wall_seconds=10)
    assert result.verdict == "ok", result
    limits, processes = result.stdout.splitlines()
    cpu = SMALL["cpu_seconds"] + (1 if TREE_LIMIT_OK and SWITCHES_UID else 0)
    assert limits == f"({cpu}, {cpu + 1}) ({128 * 2**20}, {128 * 2**20}) ({16 * 2**20}, {16 * 2**20}) (0, 0) (256, 256)"
    assert processes == "5"


@needs_bwrap
def test_a_sandbox_whose_limits_cannot_be_set_is_killed_before_its_program_starts(monkeypatch):
    def refused(*_):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(runner.resource, "prlimit", refused)
    monkeypatch.setattr(runner, "SETUP_RETRY_PAUSE_S", 0.01)
    result = run("print('the program ran')")
    monkeypatch.undo()
    assert (result.verdict, result.infrastructure_error) == ("internal_error", True)
    assert "could not set the run's limits: [Errno 1] Operation not permitted" in result.message
    assert result.stdout == ""
    if SWITCHES_UID:
        assert slot_processes() == []
    assert run("print(1)").stdout == "1\n"


@needs_bwrap
@pytest.mark.skipif(not SWITCHES_UID, reason="only a root worker switches to the slot's uid")
def test_only_the_slot_thread_takes_the_slot_uid_and_the_worker_stays_root():
    # bwrap is started by a thread of the slot's own that switched only itself to the slot's uid
    # (spawner.py); every other thread of the worker must still be root.
    assert run("print(1)").verdict == "ok"
    real_uids = {}
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            status = (task / "status").read_text()
            real_uids[int(task.name)] = [int(uid) for uid in status.split("\nUid:")[1].split("\n")[0].split()]
    slot_threads = [tid for tid, uids in real_uids.items() if uids == [SLOT_UID] * 4]
    assert len(slot_threads) == 1
    assert real_uids[os.getpid()] == [0, 0, 0, 0]
    for tid, uids in real_uids.items():
        assert uids == [0] * 4 or (len(set(uids)) == 1 and BASE_UID <= uids[0] < BASE_UID + runner.slots.MAX_SLOTS), tid
    assert (os.getuid(), os.geteuid(), os.getgid()) == (0, 0, 0)


def test_slots_are_unique_across_processes_on_one_host():
    script = "from workers.sandbox import slots; import sys; print(slots.process_slot()); sys.stdin.read()"
    holders = [
        subprocess.Popen(
            [sys.executable, "-c", script], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    try:
        claimed = [int(holder.stdout.readline()) for holder in holders]
    finally:
        for holder in holders:
            holder.stdin.close()
            holder.wait(10)
    assert len({*claimed, SLOT}) == 4


@needs_bwrap
def test_two_slots_run_side_by_side():
    started = time.monotonic()

    def sleep_and_print_slot(own: bool):
        with contextlib.nullcontext(SLOT) if own else runner.slots.free_slot_lease() as slot:
            return slot, run(f"import time\ntime.sleep(0.5)\nprint({slot})", slot=slot)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(sleep_and_print_slot, [True, False]))
    assert results[0][0] != results[1][0]
    assert [(r.verdict, r.stdout) for _, r in results] == [("ok", f"{slot}\n") for slot, _ in results]
    assert time.monotonic() - started < 1.5


def test_result_to_dict_is_plain_json():
    result = runner.SandboxResult(verdict="ok", exit_code=0, stdout="1\n")
    assert json.loads(json.dumps(result.to_dict()))["stdout"] == "1\n"


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("value", [0, -1, "high", True])
def test_limits_refuse_non_positive_or_non_numbers(name, value):
    if value == "high":
        value = SYSTEM_MAXIMUM[name] + 1
    with pytest.raises(SandboxLimitError) as error:
        SandboxLimits(**{name: value})
    assert error.value.field == name
    assert isinstance(error.value, ValueError)


@pytest.mark.parametrize("name", ["../escape", "/etc/passwd", "dir/file", ".hidden", "..", "", "a\0b", "x" * 200])
def test_file_names_with_paths_or_dots_are_refused(name):
    with pytest.raises(SandboxRequestError) as error:
        SandboxRequest(source="", files={name: "x"})
    assert error.value.field == "files"


def test_slots_outside_the_range_are_refused():
    for slot in (-1, runner.MAX_SLOTS, True):
        with pytest.raises(SandboxRequestError):
            runner.sandbox_uid(slot)


def test_importing_the_sandbox_does_not_import_django():
    env = {key: value for key, value in os.environ.items() if key != "DJANGO_SETTINGS_MODULE"}
    check = "import sys, workers.sandbox, workers.sandbox.bench; print('django' in sys.modules, 'apps' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", check], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    assert out.stdout == "False False\n"


def test_the_sandbox_hosts_celery_app_loads_no_django_settings_models_or_apps():
    import subprocess
    import sys
    from pathlib import Path

    # kombu.utils.json imports django.utils.functional when Django is installed (for lazy
    # strings); what must never load here is settings, the ORM, or any project app.
    code = (
        "import sys, workers.sandbox.app; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'apps' "
        "or m.startswith(('django.conf', 'django.db', 'django.apps'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "CELERY_BROKER_URL": "redis://127.0.0.1:1/0"},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# --- findings of issue 19 -------------------------------------------------------------------


@needs_bwrap
def test_nul_bytes_and_invalid_utf8_survive_into_the_message_as_exact_bytes():
    import base64

    source = "import sys\nsys.stdout.buffer.write(b'a\\x00b\\xff\\n')\nsys.stderr.buffer.write(b'\\x00')\n"
    result = run_hostile(source)
    assert result.verdict == "ok"
    message = result.to_message()
    encoded = json.dumps(message)
    # PostgreSQL's jsonb refuses \u0000 in any string.
    assert "\\u0000" not in encoded
    assert message["stdout"] == "a\\x00b\\xff\n"
    assert base64.b64decode(message["stdout_base64"]) == b"a\x00b\xff\n"
    assert base64.b64decode(message["stderr_base64"]) == b"\x00"


@needs_bwrap
def test_clean_text_output_carries_no_base64_copy():
    message = run("print('héllo')").to_message()
    assert (message["stdout"], message["stdout_base64"], message["stdout_bytes"]) == ("héllo\n", None, 7)


@needs_bwrap
def test_inline_output_in_the_message_is_capped_per_stream():
    result = run("import sys\nsys.stdout.write('x' * 200_000)\n", output_bytes=1_000_000)
    assert result.verdict == "ok"
    message = result.to_message()
    assert len(message["stdout"]) == runner.INLINE_OUTPUT_BYTES == 65536
    assert message["stdout_bytes"] == 200_000
    assert message["stdout_inline_truncated"] is True
    assert message["stdout_truncated"] is False


@needs_bwrap
def test_enomem_from_mmap_is_a_memory_limit_verdict():
    result = run_hostile("import mmap\nmmap.mmap(-1, 512 * 2**20)\n")
    assert result.verdict == "memory_limit", (result.verdict, result.stderr)


# Whole-run limits (findings 3, 4, 9). The wall limits are far above the CPU limits: on a loaded
# machine a program gets a fraction of a core, and the CPU limit must still be the one that fires.
TREE = {"wall_seconds": 60}


@needs_bwrap
@pytest.mark.skipif(not TREE_LIMIT_OK, reason=f"no cgroup for whole-run limits here: {TREE_LIMIT_WHY}")
def test_children_taking_turns_share_one_cpu_limit():
    source = (
        "import os, time\n"
        "for _ in range(8):\n"
        "    if os.fork() == 0:\n"
        "        start = time.process_time()\n"
        "        while time.process_time() - start < 0.6:\n"
        "            pass\n"
        "        os._exit(0)\n"
        "    os.wait()\n"
        "print('used 4.8 s')\n"
    )
    result = run_hostile(source, cpu_seconds=2, **TREE)
    assert (result.verdict, result.timeout_kind) == ("timeout", "cpu"), (result.verdict, result.cpu_seconds)
    assert 1.9 <= result.cpu_seconds < 3.5
    assert result.stdout == ""


@needs_bwrap
@pytest.mark.skipif(not TREE_LIMIT_OK, reason=f"no cgroup for whole-run limits here: {TREE_LIMIT_WHY}")
def test_cpu_of_children_that_are_never_waited_for_is_counted():
    source = (
        "import os, time\n"
        "read, write = os.pipe()\n"
        "if os.fork() == 0:\n"
        "    start = time.process_time()\n"
        "    while time.process_time() - start < 1.0:\n"
        "        pass\n"
        "    os.write(write, b'x')\n"
        "    while True:\n"
        "        pass\n"
        "os.read(read, 1)\n"
        "os._exit(0)\n"
    )
    result = run_hostile(source, cpu_seconds=10, **TREE)
    assert result.verdict == "ok", (result.verdict, result.message)
    assert result.cpu_seconds >= 1.0


@needs_bwrap
@pytest.mark.skipif(not TREE_LIMIT_OK, reason=f"no cgroup for whole-run limits here: {TREE_LIMIT_WHY}")
def test_memory_held_in_memfds_counts_against_the_memory_limit():
    source = (
        "import os\n"
        "held = []\n"
        "for i in range(64):\n"
        "    fd = os.memfd_create(f'm{i}')\n"
        "    os.write(fd, b'x' * (16 * 2**20))\n"
        "    held.append(fd)\n"
        "print('held 1 GB')\n"
    )
    result = run_hostile(source, memory_mb=64, **TREE)
    assert result.verdict == "memory_limit", (result.verdict, result.message, result.stderr[-300:])
    assert result.tree_peak_memory_mb <= 64 + SMALL["tmpfs_mb"] + runner.TREE_OVERHEAD_MB + 1


def test_a_sandbox_worker_without_whole_run_limits_refuses_to_start_unless_told_to_accept_them():
    def start(**env):
        environment = {"PATH": os.environ["PATH"], "CELERY_BROKER_URL": "redis://127.0.0.1:1/0", **env}
        command = [sys.executable, "-m", "celery", "-A", "workers.sandbox.app", "worker", "-Q", "sandbox", "-c", "1"]
        return subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=60)

    refused = start(SANDBOX_TREE_MEMORY_LIMIT="0")
    assert refused.returncode == runner.EXIT_NO_WHOLE_RUN_LIMITS, refused.stderr[-2000:]
    assert "sandbox.whole_run_limits_unavailable" in refused.stderr and "SANDBOX_ACCEPT_WEAK_LIMITS" in refused.stderr


def test_weak_limits_can_be_accepted_explicitly_and_are_logged(monkeypatch, caplog):
    from workers.sandbox import app

    monkeypatch.setenv(runner.cgroups.SETTING, "0")
    monkeypatch.setenv(runner.cgroups.ACCEPT_WEAK_SETTING, "1")
    assert app.check_whole_run_limits() is False
    assert [r.levelname for r in caplog.records if r.message == "sandbox.weak_limits_accepted"] == ["WARNING"]


# --- the seccomp filter (finding 5): one hostile call each, EPERM, and the run goes on ----------

# (syscall, its arguments): each fails with EPERM under the filter, whatever it would do without.
HOSTILE_CALLS = [
    ("ptrace", [16, 1, 0, 0]),  # PTRACE_ATTACH to bwrap's init: froze the run until the wall limit
    ("process_vm_readv", [1, 0, 0, 0, 0, 0]),
    ("process_vm_writev", [1, 0, 0, 0, 0, 0]),
    ("io_uring_setup", [1, 0]),
    ("io_uring_enter", [0, 0, 0, 0, 0, 0]),
    ("io_uring_register", [0, 0, 0, 0]),
    ("keyctl", [0, 0, 0, 0, 0]),
    ("add_key", [0, 0, 0, 0, 0]),
    ("request_key", [0, 0, 0, 0]),
    ("bpf", [0, 0, 0]),
    ("userfaultfd", [0]),
    ("perf_event_open", [0, 0, -1, -1, 0]),
    ("mount", [0, 0, 0, 0, 0]),
    ("umount2", [0, 0]),
    ("pivot_root", [0, 0]),
    ("fsopen", [0, 0]),
    ("open_tree", [-100, 0, 0]),
    ("move_mount", [-100, 0, -100, 0, 0]),
    ("unshare", [0x10000000]),  # CLONE_NEWUSER
    ("unshare", [0]),
    ("setns", [-1, 0]),
    ("clone", [0x04000000 | 17, 0, 0, 0, 0]),  # CLONE_NEWUTS | SIGCHLD
    ("kexec_load", [0, 0, 0, 0]),
    ("kexec_file_load", [-1, -1, 0, 0, 0]),
    ("init_module", [0, 0, 0]),
    ("finit_module", [-1, 0, 0]),
    ("delete_module", [0, 0]),
    ("socket", [16, 3, 0]),  # AF_NETLINK, SOCK_RAW
]


def _syscall_number(name: str) -> int:
    import pyseccomp

    return pyseccomp.resolve_syscall(pyseccomp.system_arch(), name)


@needs_bwrap
def test_the_seccomp_filter_answers_each_hostile_call_with_eperm_and_the_run_goes_on():
    calls = [(name, _syscall_number(name), args) for name, args in HOSTILE_CALLS]
    source = (
        "import ctypes, json, os\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "libc.syscall.restype = ctypes.c_long\n"
        f"calls = {calls!r}\n"
        "answers = {}\n"
        "for name, number, args in calls:\n"
        "    ctypes.set_errno(0)\n"
        "    result = libc.syscall(number, *[ctypes.c_long(a) for a in args])\n"
        "    if result == 0 and name == 'clone':\n"
        "        os._exit(0)  # the child of a clone that was allowed\n"
        "    errno = ctypes.get_errno()\n"
        "    answers[f'{name}{args}'] = 'EPERM' if result == -1 and errno == 1 else (result, errno)\n"
        "print(json.dumps(answers))\n"
        "print('still running')\n"
    )
    result = run_hostile(source, wall_seconds=10)
    assert result.verdict == "ok", (result.verdict, result.message, result.stderr[-2000:])
    answers = json.loads(result.stdout.splitlines()[0])
    assert {call: answer for call, answer in answers.items() if answer != "EPERM"} == {}
    assert result.stdout.splitlines()[1] == "still running"
    assert result.wall_seconds < 5


@needs_bwrap
def test_ptrace_of_the_sandbox_init_cannot_freeze_the_run():
    source = (
        "import ctypes, time\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "print(libc.ptrace(16, 1, 0, 0), ctypes.get_errno())\n"  # PTRACE_ATTACH, pid 1
        "time.sleep(0.2)\n"
        "print('done')\n"
    )
    result = run_hostile(source, wall_seconds=10)
    assert (result.verdict, result.stdout) == ("ok", "-1 1\ndone\n"), (result.verdict, result.stdout, result.message)


@pytest.mark.skipif(not SWITCHES_UID, reason="needs root to start a process as the slot's uid")
def test_a_zombie_of_the_slot_uid_is_reaped_not_reported_as_unkillable():
    # Under load, bwrap's init could be orphaned to the worker (a child subreaper) and stay a
    # zombie of the slot's uid: every later run of the slot failed with "unkillable processes".
    child = subprocess.Popen(["/bin/true"], user=SLOT_UID, group=SLOT_UID, extra_groups=[])
    deadline = time.monotonic() + 5
    while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.01)
    assert runner.kill_uid_processes(SLOT_UID) == []
    assert not psutil.pid_exists(child.pid)


@pytest.mark.skipif(os.geteuid() != 0, reason="whole-run limits need a root worker")
def test_the_cgroup_v2_layout_against_a_fake_delegated_cgroup(tmp_path, monkeypatch):
    # The development machines are cgroup v1 hosts; this runs the v2 code over files shaped like
    # a delegated cgroup2 directory, so the deployment's layout is at least read and written right.
    from workers.sandbox import cgroups

    root = tmp_path / "cgroup"
    delegated = root / "sandbox.slice"
    delegated.mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (delegated / "cgroup.controllers").write_text("cpu memory pids\n")
    (delegated / "cgroup.subtree_control").write_text("")
    (delegated / "cgroup.procs").write_text("")
    monkeypatch.setattr(cgroups, "CGROUP_ROOT", root)
    monkeypatch.setenv(cgroups.V2_SETTING, str(delegated))
    monkeypatch.delenv(cgroups.SETTING, raising=False)

    assert cgroups.available() == (True, f"v2:{delegated}")
    assert (delegated / "worker").is_dir()
    assert (delegated / "cgroup.subtree_control").read_text() == "+memory +cpu"

    slot = cgroups.SlotCgroup.for_slot(7)
    assert isinstance(slot, cgroups.V2SlotCgroup) and slot.path == delegated / "slot-7"
    (slot.path / "cpu.stat").write_text("usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n")
    (slot.path / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    (slot.path / "memory.peak").write_text("104857600\n")
    slot.prepare(limit_bytes=88 * 2**20)
    assert (slot.path / "memory.max").read_text() == str(88 * 2**20)
    slot.adopt(4242)
    assert (slot.path / "cgroup.procs").read_text() == "4242"
    (slot.path / "cpu.stat").write_text("usage_usec 3750000\n")
    (slot.path / "memory.events").write_text("oom_kill 2\n")
    assert slot.cpu_seconds_used() == pytest.approx(2.25)
    assert slot.oom_killed_during_run() is True


def test_without_a_delegated_cgroup_v2_the_reason_is_given(tmp_path, monkeypatch):
    from workers.sandbox import cgroups

    root = tmp_path / "cgroup"
    (root / "plain").mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpu memory\n")
    (root / "plain" / "cgroup.controllers").write_text("pids\n")
    monkeypatch.setattr(cgroups, "CGROUP_ROOT", root)
    monkeypatch.setattr(cgroups.os, "geteuid", lambda: 0)
    monkeypatch.setenv(cgroups.V2_SETTING, str(root / "plain"))
    monkeypatch.delenv(cgroups.SETTING, raising=False)
    ok, why = cgroups.available()
    assert not ok and "not delegated the cpu and memory controller(s)" in why
