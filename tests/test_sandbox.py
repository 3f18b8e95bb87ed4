"""The sandbox (workers/sandbox.py): real subprocesses in real namespaces, each hostile program contained and its
end reported in words. Every kind of isolation that works on this machine is tested; bubblewrap must."""

from __future__ import annotations

import ast
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from workers import sandbox
from workers.sandbox import Limits, SandboxError, run_python

TIGHT = Limits(cpu_s=1, wall_s=4.0, memory_bytes=128 << 20, processes=16, file_bytes=64 << 10, output_bytes=4000)


def _works(kind: str) -> bool:
    try:
        return run_python("print('ok')", TIGHT, isolation=kind).stdout == "ok\n"
    except OSError:
        return False


KINDS = [k for k in ("bwrap", "unshare") if shutil.which(k) and _works(k)]


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    """Each isolation that works here."""
    return str(request.param)


@pytest.fixture
def outside() -> Iterator[Path]:
    """A world-readable, world-writable directory outside any scratch directory, with a secret file in it."""
    directory = Path(tempfile.mkdtemp(prefix="outside-", dir="/var/tmp"))
    directory.chmod(0o777)
    secret = directory / "secret.txt"
    secret.write_text("the secret")
    secret.chmod(0o644)
    yield directory
    shutil.rmtree(directory)


def _sandbox_processes() -> list[str]:
    """Command lines of processes still running a sandboxed program."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "main.py" in cmdline and ("/scratch/" in cmdline or "sandbox-" in cmdline):
            found.append(cmdline)
    return found


def test_bubblewrap_is_the_isolation_chosen_on_this_machine() -> None:
    assert "bwrap" in KINDS
    assert sandbox.find_isolation() == "bwrap"


def test_a_program_runs_and_its_output_and_status_are_reported(kind: str) -> None:
    result = run_python("import sys\nprint('out')\nprint('err', file=sys.stderr)\n", TIGHT, isolation=kind)
    assert (result.returncode, result.stdout, result.stderr) == (0, "out\n", "err\n")
    assert result.status == "exit status 0 (success)" and not result.timed_out
    assert result.report().startswith(f"exit status 0 (success); {result.duration_s:.2f} s; sandbox: {kind}")


def test_the_environment_holds_no_secret_of_the_worker(kind: str) -> None:
    os.environ["SANDBOX_TEST_SECRET"] = "hunter2"
    try:
        result = run_python(
            "import os\nprint(sorted(os.environ))\nprint(list(os.environ.values()))", TIGHT, isolation=kind
        )
    finally:
        del os.environ["SANDBOX_TEST_SECRET"]
    assert "hunter2" not in result.stdout and "SANDBOX_TEST_SECRET" not in result.stdout
    names = set(ast.literal_eval(result.stdout.splitlines()[0]))
    assert names <= {"PATH", "LANG", "HOME", "PWD"}


def test_an_exception_is_reported_with_its_traceback(kind: str) -> None:
    result = run_python("1/0", TIGHT, isolation=kind)
    assert result.returncode == 1 and "ZeroDivisionError" in result.stderr
    assert result.status == "exit status 1 (an error: see stderr)"


def test_an_infinite_loop_is_stopped_at_the_cpu_limit(kind: str) -> None:
    result = run_python("while True:\n    pass\n", TIGHT, isolation=kind)
    assert result.status.startswith("stopped at the CPU time limit of 1 s"), result
    assert not result.timed_out and result.duration_s < TIGHT.wall_s


def test_a_sleeping_program_is_killed_at_the_wall_clock_limit(kind: str) -> None:
    started = time.monotonic()
    result = run_python("import time\ntime.sleep(60)\n", Limits(wall_s=1.5), isolation=kind)
    assert result.timed_out and result.status == "killed: it ran past the wall-clock limit of 1.5 s"
    assert time.monotonic() - started < 5
    assert _sandbox_processes() == []


def test_a_fork_bomb_is_held_to_the_process_limit_and_leaves_nothing_behind(kind: str) -> None:
    bomb = (
        "import os, time\nforked = 0\ntry:\n    while True:\n        if os.fork() == 0:\n            time.sleep(30)\n"
        "            os._exit(0)\n        forked += 1\nexcept OSError as ex:\n    print('refused after', forked, ex)\n"
    )
    result = run_python(bomb, TIGHT, isolation=kind)
    assert result.returncode == 0 and result.stdout.startswith("refused after"), result
    assert int(result.stdout.split()[2]) < TIGHT.processes
    assert _sandbox_processes() == []  # the sleeping children went with the sandbox


def test_a_fork_bomb_that_never_stops_is_ended_by_the_limits(kind: str) -> None:
    result = run_python(
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
        TIGHT,
        isolation=kind,
    )
    assert result.status.startswith(("stopped at the CPU time limit", "killed: it ran past")), result
    assert _sandbox_processes() == []


def test_a_memory_hog_gets_a_memory_error(kind: str) -> None:
    result = run_python("hog = bytearray(512 << 20)\n", TIGHT, isolation=kind)
    assert "MemoryError" in result.stderr
    assert result.status == "exit status 1: out of memory (limit 128 MiB)"


def test_a_large_write_stops_at_the_file_size_limit(kind: str) -> None:
    result = run_python("with open('big.bin', 'wb') as f:\n    f.write(b'x' * (1 << 20))\n", TIGHT, isolation=kind)
    assert "File too large" in result.stderr
    assert result.status == "exit status 1: a file reached the size limit (64 KiB)"


def test_output_is_cut_at_the_cap(kind: str) -> None:
    result = run_python("print('y' * 1_000_000)\n", TIGHT, isolation=kind)
    assert result.returncode == 0 and result.truncated
    assert len(result.stdout) == TIGHT.output_bytes and "(output cut)" in result.report()


def test_the_network_is_unreachable(kind: str) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        port = listener.getsockname()[1]
        code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\nprint('connected')\n"
        result = run_python(code, TIGHT, isolation=kind)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody ever connected
    assert "connected" not in result.stdout
    assert "ConnectionRefusedError" in result.stderr or "Network is unreachable" in result.stderr


def test_the_scratch_directory_is_the_working_directory_and_is_removed_after() -> None:
    before = {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("sandbox-")}
    result = run_python(
        "import os\nopen('note.txt', 'w').write('hi')\nprint(os.getcwd(), sorted(os.listdir('.')))", TIGHT
    )
    assert result.stdout.strip() == "/scratch ['main.py', 'note.txt']"
    after = {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("sandbox-")}
    assert after <= before


def test_bubblewrap_hides_the_rest_of_the_filesystem(outside: Path) -> None:
    code = (
        f"import os\nprint(sorted(os.listdir('/')))\n"
        f"for path in ('{outside}/secret.txt', '/etc/hostname', '{Path.cwd()}/settings.py'):\n"
        "    try:\n        print(open(path).read())\n    except OSError as ex:\n        print(type(ex).__name__)\n"
        f"try:\n    open('{outside}/planted.txt', 'w').write('x')\n    print('planted')\n"
        "except OSError as ex:\n    print(type(ex).__name__)\n"
    )
    result = run_python(code, TIGHT, isolation="bwrap")
    lines = result.stdout.splitlines()
    assert set(ast.literal_eval(lines[0])) <= {
        "bin",
        "dev",
        "lib",
        "lib32",
        "lib64",
        "proc",
        "sbin",
        "scratch",
        "tmp",
        "usr",
    }
    assert lines[1:] == ["FileNotFoundError"] * 4, result
    assert not (outside / "planted.txt").exists()


@pytest.mark.skipif("unshare" not in KINDS, reason="unshare cannot set up namespaces here")
def test_unshare_runs_as_an_unprivileged_user_on_the_shared_filesystem(outside: Path) -> None:
    """The fallback shares the host's filesystem: what `nobody` may read is readable (documented); what only the
    worker may read or write is not."""
    private = outside / "private.txt"
    private.write_text("root only")
    private.chmod(0o600)
    code = (
        f"for path in ('{outside}/secret.txt', '{private}'):\n"
        "    try:\n        print(open(path).read())\n    except OSError as ex:\n        print(type(ex).__name__)\n"
        f"try:\n    open('{Path.cwd()}/planted.txt', 'w')\nexcept OSError as ex:\n    print(type(ex).__name__)\n"
    )
    result = run_python(code, TIGHT, isolation="unshare")
    assert result.stdout.splitlines() == ["the secret", "PermissionError", "PermissionError"], result
    assert not (Path.cwd() / "planted.txt").exists()


def test_without_any_isolation_the_sandbox_refuses_to_run(tmp_path: Path) -> None:
    with pytest.raises(SandboxError, match="no code is run: bwrap is not installed; unshare is not installed"):
        sandbox.find_isolation(str(tmp_path))


def test_a_program_too_long_is_refused() -> None:
    with pytest.raises(SandboxError, match="longer than 64000 characters"):
        run_python("#" * 64_001)


def test_the_program_runs_as_nobody_when_the_worker_is_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("the worker is not root here")
    result = run_python("import os\nprint(os.getuid())", TIGHT, isolation="bwrap")
    assert result.stdout == "65534\n"
    ps = subprocess.run(["id", "-u", "nobody"], capture_output=True, text=True)
    assert ps.stdout.strip() == "65534"
