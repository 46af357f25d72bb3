"""Judge mode against real sandboxes: compiled once, a verdict per case, output files that follow no link."""

import dataclasses
import json
import os
import time

import pytest

from workers.sandbox import bwrap_available, runner
from workers.sandbox.judge import (
    MAX_FILE_BYTES_PER_CASE,
    MAX_FILES_PER_CASE,
    MAX_FILES_PER_SUBMISSION,
    SANDBOXES_AHEAD,
    JudgeCase,
    JudgeRequest,
    compile_program,
    outputs_match,
    run_judge,
)
from workers.sandbox.runner import (
    OutputFolder,
    PreparedProgram,
    SandboxLimits,
    SandboxRequest,
    SandboxRequestError,
    parse_collected_files,
)

SLOT = runner.slots.process_slot()
AVAILABLE, WHY = bwrap_available()
needs_bwrap = pytest.mark.skipif(not AVAILABLE, reason=f"sandbox unavailable: {WHY}")
# Cases start ahead in spare slots only for a root worker (a uid per sandbox).
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="sandboxes start ahead only for a root worker")
# Wall limits far above the CPU limits: the verdicts hold on a loaded machine.
LIMITS = SandboxLimits(cpu_seconds=2, wall_seconds=20, memory_mb=256, output_bytes=100_000)


def judge(source: str, cases, **kwargs):
    cases = tuple(
        case if isinstance(case, JudgeCase) else JudgeCase(stdin=case[0], expected_output=case[1]) for case in cases
    )
    return run_judge(JudgeRequest(source=source, test_cases=cases, limits=kwargs.pop("limits", LIMITS), **kwargs), SLOT)


def files_of(result, index=0) -> dict[str, bytes]:
    return dict(result.cases[index].run.files)


@pytest.mark.parametrize(
    ("actual", "expected", "rule", "match"),
    [
        (b"1 2\n3\n", b"1 2\n3", "lines", True),  # trailing newline
        (b"1 2  \t\n3\n\n\n", b"1 2\n3\n", "lines", True),  # trailing spaces, tabs, empty lines
        (b"1 2\r\n3\r\n", b"1 2\n3\n", "lines", True),  # CRLF
        (b"1  2\n3\n", b"1 2\n3\n", "lines", False),  # inner whitespace counts
        (b"\n1\n", b"1\n", "lines", False),  # leading empty lines count
        (b"1\n", b"1", "exact", False),
        (b"1\n", b"1\n", "exact", True),
    ],
)
def test_the_comparison_rules(actual, expected, rule, match):
    assert outputs_match(actual, expected, rule) is match


@needs_bwrap
def test_each_case_gets_its_verdict_and_usage_and_the_first_failure_names_the_submission():
    source = "import sys\nn = int(input())\nif n == 3: sys.exit(4)\nif n == 4:\n    while True: pass\nprint(n * 2)\n"
    cases = [
        ("2\n", "0\n"),
        ("1", "2"),
        ("5", "10  \n\n"),
        ("3", "6"),
        JudgeCase(stdin="4", expected_output="8", limits=SandboxLimits(**{**LIMITS.__dict__, "cpu_seconds": 1})),
    ]
    result = judge(source, cases)
    verdicts = [case.verdict for case in result.cases]
    assert verdicts == ["wrong_answer", "accepted", "accepted", "runtime_error", "timeout"]
    assert result.verdict == "wrong_answer" and result.message == "test case 0: wrong_answer"
    message = result.to_message()
    assert message["passed"] == 2 and message["total"] == 5
    assert message["cases"][3]["exit_code"] == 4
    assert message["cases"][4]["timeout_kind"] == "cpu" and message["cases"][4]["cpu_seconds"] >= 1
    assert all(case["wall_seconds"] > 0 and case["peak_memory_mb"] > 0 for case in message["cases"])
    json.dumps(message)


@needs_bwrap
def test_the_program_is_compiled_once_and_each_case_runs_the_bytecode():
    result = judge("import sys\nprint(sys.argv[0])\n", [("", "/code/main.pyc")] * 3)
    assert result.verdict == "accepted", result.to_message()
    assert result.compile_wall_seconds > 0


@needs_bwrap
def test_a_syntax_error_is_a_compile_error_and_no_case_runs():
    result = judge("x = 1\nprint(x\n", [("", "1")] * 3)
    assert result.verdict == "compile_error" and result.cases == []
    assert "line 2" in result.message and "print(x" in result.message and "never closed" in result.message


@needs_bwrap
def test_a_cancelled_submission_runs_no_further_case():
    asked = []

    def cancelled():
        asked.append(1)
        return len(asked) > 2

    request = JudgeRequest(source="print(1)", test_cases=(JudgeCase("1"),) * 5, limits=LIMITS)
    result = run_judge(request, SLOT, cancelled=cancelled)
    assert [case.verdict for case in result.cases] == ["accepted", "accepted"]
    assert result.verdict == "killed" and result.message == "cancelled before test case 2"


@needs_bwrap
def test_runtime_tracebacks_show_the_source_lines():
    result = judge("x = 1\nraise ValueError('boom')\n", [("", "")])
    stderr = result.cases[0].run.stderr
    assert result.verdict == "runtime_error"
    assert 'File "/code/main.py", line 2' in stderr and "raise ValueError('boom')" in stderr


@needs_bwrap
def test_files_in_the_output_folder_come_back_per_case():
    source = (
        "import os\nn = input()\nos.makedirs('out/deep', exist_ok=True)\n"
        "open('out/answer.txt', 'w').write('answer ' + n)\nopen('out/deep/raw.bin', 'wb').write(bytes([0, 255]))\n"
        "open('not-returned.txt', 'w').write('x')\nprint(n)\n"
    )
    result = judge(source, [("1", "1"), ("2", "2")], output_dir="out")
    assert result.verdict == "accepted"
    assert files_of(result, 0) == {"answer.txt": b"answer 1", "deep/raw.bin": b"\x00\xff"}
    assert files_of(result, 1)["answer.txt"] == b"answer 2"
    entry = result.to_message()["cases"][0]["files"][0]
    assert entry["path"] == "answer.txt" and entry["size"] == 8 and len(entry["sha256"]) == 64


@needs_bwrap
def test_symlinks_out_of_the_output_folder_are_never_followed():
    source = (
        "import os\n"
        "os.symlink('/code/main.py', 'out/source')\nos.symlink('/proc/self/environ', 'out/environ')\n"
        "os.symlink('/dev/zero', 'out/zeros')\nos.symlink('/', 'out/root')\nos.mkfifo('out/fifo')\n"
        "open('out/real.txt', 'w').write('real')\n"
    )
    result = judge(source, [("", "")], output_dir="out")
    assert result.verdict == "accepted", result.to_message()
    assert files_of(result) == {"real.txt": b"real"}


@needs_bwrap
def test_an_output_folder_replaced_by_a_symlink_returns_nothing():
    # The harness creates the folder before the program starts; the program swaps it for a link.
    source = "import os\nos.rmdir('out')\nos.symlink('/code', 'out')\n"
    result = judge(source, [("", "")], output_dir="out")
    assert result.verdict == "accepted" and files_of(result) == {}
    nested = judge("import os\nos.rmdir('a/b')\nos.symlink('/code', 'a/b')\n", [("", "")], output_dir="a/b")
    assert files_of(nested) == {}


@needs_bwrap
def test_many_and_huge_files_are_capped_per_case():
    source = (
        "open('out/0-huge.bin', 'wb').write(b'h' * 3_000_000)\n"
        "for i in range(200): open(f'out/f{i:03d}.txt', 'w').write(str(i))\n"
    )
    limits = SandboxLimits(cpu_seconds=5, wall_seconds=30, memory_mb=256, tmpfs_mb=16)
    result = judge(source, [("", "")], output_dir="out", limits=limits)
    case = result.cases[0].run
    assert result.verdict == "accepted", result.to_message()
    assert len(case.files) == MAX_FILES_PER_CASE and case.files_truncated
    assert "0-huge.bin" not in dict(case.files)
    assert sum(len(data) for _, data in case.files) <= MAX_FILE_BYTES_PER_CASE


@needs_bwrap
def test_a_folder_of_many_links_and_empty_folders_is_walked_within_its_entry_cap():
    source = (
        "import os\nfor i in range(20000): os.symlink('/dev/zero', f'out/l{i:05d}')\n"
        "for i in range(50): os.mkdir(f'out/d{i:02d}')\nopen('out/zz.txt', 'w').write('z')\n"
    )
    limits = SandboxLimits(cpu_seconds=10, wall_seconds=60, memory_mb=256, tmpfs_mb=64)
    result = judge(source, [("", "")], output_dir="out", limits=limits)
    assert result.verdict == "accepted", result.to_message()
    assert files_of(result) == {} and result.cases[0].run.files_truncated


@needs_bwrap
def test_the_submission_returns_at_most_its_file_cap():
    source = "for i in range(16): open(f'out/{i}', 'w').write('x')\n"
    result = judge(source, [("", "")] * 5, output_dir="out")
    counts = [len(case.run.files) for case in result.cases]
    assert sum(counts) == MAX_FILES_PER_SUBMISSION and counts[-1] == 0 and result.cases[-1].run.files_truncated


@needs_bwrap
def test_a_program_cannot_forge_files_through_the_harness_pipe_or_outlive_it():
    # The harness's pipe is close-on-exec and the harness is not dumpable: /proc/<ppid>/fd is closed
    # to the program. A program that kills the harness ends its own run as killed, without files.
    forge = (
        "import os\nopened = []\n"
        "for fd in range(3, 32):\n"
        '    try:\n        os.write(fd, b\'{"path": "forged", "size": 1}\\nF\')\n        opened.append(fd)\n'
        "    except OSError: pass\n"
        "for name in os.listdir('/proc/%d/fd' % os.getppid()) if os.access('/proc/%d/fd' % os.getppid(), os.R_OK) "
        "else []:\n"
        "    opened.append(name)\n"
        "print(opened)\n"
    )
    result = judge(forge, [("", "[]")], output_dir="out")
    assert result.verdict == "accepted", result.to_message()
    assert files_of(result) == {}
    killer = "import os, signal\nopen('out/a', 'w').write('a')\n"
    killer += "os.kill(os.getppid(), signal.SIGKILL)\n"
    killed = judge(killer, [("", "")], output_dir="out")
    assert killed.verdict == "killed" and files_of(killed) == {}


def test_the_harness_report_is_checked_again_outside_the_sandbox():
    folder = OutputFolder("out", max_files=2, max_bytes=10)
    report = (
        b'{"path": "ok.txt", "size": 2}\nok'
        b'{"path": "../escape", "size": 1}\nx'
        b'{"path": "/abs", "size": 1}\nx'
        b'{"path": "trailing\\n", "size": 1}\nx'
        b'{"path": "link", "skipped": "symlink"}\n'
        b'{"path": "big", "size": 20}\n' + b"b" * 20 + b'{"end": true, "truncated": false}\n'
    )
    files, truncated = parse_collected_files(report, folder)
    assert files == [("ok.txt", b"ok")] and truncated
    # Cut off mid-file (the harness was killed while writing): what arrived whole, and truncated.
    assert parse_collected_files(b'{"path": "a", "size": 1}\na{"path": "b", "size": 9}\nbb', folder) == (
        [("a", b"a")],
        True,
    )


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"test_cases": ()}, "test_cases"),
        ({"test_cases": (JudgeCase("1"),) * 65}, "test_cases"),
        ({"compare": "fuzzy"}, "compare"),
        ({"output_dir": "../up"}, "output_dir"),
        ({"output_dir": "/abs"}, "output_dir"),
        ({"output_dir": "out\n"}, "output_dir"),
        ({"test_cases": (JudgeCase("1"), JudgeCase("x" * 1_000_001))}, "test_cases[1].expected_output"),
        (
            {"test_cases": (JudgeCase("1", limits=SandboxLimits(cpu_seconds=20)),)},
            "test_cases[0].limits.cpu_seconds",
        ),
        ({"test_cases": (JudgeCase("1"),) * 30, "limits": SandboxLimits(wall_seconds=30)}, "test_cases"),
        # The files fit the submission's /work but not a case's own, smaller one: refused up front,
        # not a SandboxRequestError on the sandbox host when that case's turn comes.
        (
            {
                "files": {"big.txt": "x" * 2_000_000},
                "test_cases": (JudgeCase("1"), JudgeCase("1", limits=SandboxLimits(tmpfs_mb=1))),
            },
            "test_cases[1].limits",
        ),
        (
            {
                "files": {"big.txt": "x" * 2_000_000},
                "test_cases": (JudgeCase("1", limits=SandboxLimits(file_size_mb=1)),),
            },
            "test_cases[0].limits",
        ),
    ],
)
def test_judge_requests_are_validated_with_the_field_named(kwargs, field):
    request = {"source": "print(1)", "test_cases": (JudgeCase("1"),), **kwargs}
    with pytest.raises(SandboxRequestError) as raised:
        JudgeRequest(**request)
    assert raised.value.field == field


def sandboxes_of_this_process() -> list[int]:
    """bwrap processes that are children of any thread of this process (started, running or waiting)."""
    found = []
    for thread in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{thread}/children") as children:
            for pid in children.read().split():
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                        if b"bwrap" in cmdline.read().split(b"\0")[0]:
                            found.append(int(pid))
                except OSError:
                    continue
    return found


@needs_bwrap
@needs_root
def test_the_next_cases_sandboxes_are_started_before_a_case_runs():
    # Before each case runs, the cases after it have their sandbox too (decision 0050); a judge
    # that starts each case's sandbox in its turn has no sandbox at all between two cases.
    cases = 5
    reached = []

    def cancelled():
        expected = min(1 + SANDBOXES_AHEAD, cases - len(reached))
        deadline = time.monotonic() + 20
        while len(sandboxes_of_this_process()) < expected and time.monotonic() < deadline:
            time.sleep(0.01)
        reached.append(len(sandboxes_of_this_process()) >= expected)
        return False

    request = JudgeRequest(source="print(1)", test_cases=(JudgeCase("1"),) * cases, limits=LIMITS)
    result = run_judge(request, SLOT, cancelled=cancelled)
    assert result.verdict == "accepted", result.to_message()
    assert reached == [True] * cases
    assert sandboxes_of_this_process() == []


@needs_bwrap
@needs_root
def test_each_case_started_ahead_runs_in_a_slot_and_uid_of_its_own():
    result = judge("import os\nprint(os.getuid())\n", [("", "")] * 4)
    uids = [int(case.run.stdout) for case in result.cases]
    assert len(set(uids[: 1 + SANDBOXES_AHEAD])) == 1 + SANDBOXES_AHEAD, uids
    assert all(runner.BASE_UID <= uid < runner.BASE_UID + runner.slots.MAX_SLOTS for uid in uids)
    assert uids[1 + SANDBOXES_AHEAD] == uids[0]


@needs_bwrap
def test_a_case_started_ahead_sees_what_a_direct_run_of_its_bytecode_sees():
    # The interpreter waited for its turn (starter.py): the program must not see it, its pipe or its
    # names; sys.modules, globals, argv, __loader__, open descriptors and a traceback are a direct
    # run's.
    source = (
        "import sys\nmodules = sorted(sys.modules)\nimport os\n"
        "print(list(globals()), __file__, __cached__, __doc__, __spec__, type(__loader__).__name__, __loader__.path)\n"
        "print(sys.argv, sys.path, modules, sys.flags, os.listdir('/proc/self/fd'))\n"
        "print(os.environ.get('PYTHONDONTWRITEBYTECODE'))\n"
        "print(sys.stdin.read())\n"
        "def fail():\n    raise ValueError('boom')\nfail()\n"
    )
    result = judge(source, [("in", "")] * 3)
    bytecode, _ = compile_program(JudgeRequest(source=source, test_cases=(JudgeCase(""),), limits=LIMITS), SLOT)
    direct = runner.run_sandbox(
        SandboxRequest(source=source, stdin="in", limits=LIMITS), SLOT, program=PreparedProgram(bytecode=bytecode)
    )
    assert direct.verdict == "runtime_error" and "['/code/main.pyc']" in direct.stdout, direct
    for case in result.cases:
        assert case.run.stdout == direct.stdout
        assert case.run.stderr == direct.stderr
        assert case.run.exit_code == direct.exit_code == 1


@needs_bwrap
def test_a_case_started_ahead_counts_its_wall_clock_from_its_release():
    # Case 1's sandbox waits while case 0 sleeps 4 s; its own wall limit of 3 s starts when it runs.
    slow = JudgeCase(stdin="4", expected_output="done")
    quick = JudgeCase(stdin="0", expected_output="done", limits=dataclasses.replace(LIMITS, wall_seconds=3))
    result = judge("import time\ntime.sleep(float(input()))\nprint('done')\n", [slow, quick])
    assert [case.verdict for case in result.cases] == ["accepted", "accepted"], result.to_message()
    assert result.cases[0].run.wall_seconds >= 4 > 3 > result.cases[1].run.wall_seconds


@needs_bwrap
def test_sandboxes_started_ahead_of_a_cancelled_or_broken_off_submission_are_ended():
    request = JudgeRequest(source="print(1)", test_cases=(JudgeCase("1"),) * 6, limits=LIMITS)
    asked = []

    def cancelled():
        asked.append(1)
        return len(asked) > 2

    result = run_judge(request, SLOT, cancelled=cancelled)
    assert result.verdict == "killed" and len(result.cases) == 2
    assert sandboxes_of_this_process() == []

    def broken():
        asked.append(1)
        if len(asked) > 5:
            raise RuntimeError("the cancel check failed")
        return False

    with pytest.raises(RuntimeError, match="the cancel check failed"):
        run_judge(request, SLOT, cancelled=broken)
    assert sandboxes_of_this_process() == []


@needs_bwrap
def test_a_cancel_that_kills_and_reaps_the_waiting_sandboxes_ends_the_submission_cleanly():
    """As the sandbox worker's SIGTERM handler does: kill every slot the process holds (reaping bwrap)."""
    from workers.sandbox.runner import kill_uid_processes, sandbox_uid
    from workers.sandbox.slots import held_by_this_process

    request = JudgeRequest(source="print(1)", test_cases=(JudgeCase("1"),) * 6, limits=LIMITS)
    asked = []

    def cancelled():
        asked.append(1)
        if len(asked) == 2:  # the next cases' sandboxes are waiting in spare slots now
            for slot in held_by_this_process():
                kill_uid_processes(sandbox_uid(slot))
            return True
        return False

    result = run_judge(request, SLOT, cancelled=cancelled)
    assert result.verdict == "killed" and len(result.cases) == 1
    assert sandboxes_of_this_process() == []
