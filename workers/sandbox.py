"""Run untrusted Python in a sandboxed subprocess, or refuse to run it.

Isolation, the strongest the host allows: bubblewrap (`bwrap`) gives new user, network, PID, IPC and UTS
namespaces, a filesystem of read-only system directories plus a size-limited scratch tmpfs, and nothing else (no
/home, /root, /etc, /work); else `unshare` gives new user, network and PID namespaces on the host's filesystem.
With neither, `run_python` raises `SandboxError`: code never runs without network isolation. Always, through
`prlimit`: CPU time, address space, process count, file size, open files, no core dumps; a wall-clock timeout
kills the whole sandbox; output is cut to a cap; the environment is empty but for PATH and LANG (and HOME under
bubblewrap); Python runs with `-I` (isolated); a worker running as root runs the code as `nobody`. The scratch
directory is removed after.
"""

from __future__ import annotations

import contextlib
import functools
import os
import selectors
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

NOBODY = 65534
PYTHONS = ("/usr/bin/python3", "/usr/local/bin/python3")  # the system's Python: the standard library only
MAX_CODE_CHARS = 64_000
ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}  # all the sandbox gets of an environment
_SIGNALS: dict[int, str] = {
    signal.SIGKILL: "killed",
    signal.SIGXCPU: "stopped at the CPU time limit",
    signal.SIGXFSZ: "stopped at the file size limit",
    signal.SIGSEGV: "crashed (segmentation fault)",
}


class SandboxError(Exception):
    """Raised when the sandbox cannot be set up here; the code was not run."""


@dataclass(frozen=True)
class Limits:
    """What one run may use."""

    cpu_s: int = 5
    wall_s: float = 10.0
    memory_bytes: int = 256 << 20
    processes: int = 32
    file_bytes: int = 1 << 20
    scratch_bytes: int = 16 << 20  # the scratch tmpfs (bubblewrap only)
    output_bytes: int = 32_000  # each of stdout and stderr


@dataclass(frozen=True)
class Result:
    """How a run ended and what it printed."""

    isolation: str
    returncode: int
    stdout: str
    stderr: str
    truncated: bool
    timed_out: bool
    duration_s: float
    limits: Limits

    @property
    def signal(self) -> int | None:
        """The signal that ended the program, if one did (the sandbox's init reports it as 128 + N)."""
        if self.returncode < 0:
            return -self.returncode
        return self.returncode - 128 if self.returncode > 128 else None

    @property
    def status(self) -> str:
        """The end of the run in words."""
        limits = self.limits
        if self.timed_out:
            return f"killed: it ran past the wall-clock limit of {limits.wall_s:g} s"
        if "MemoryError" in self.stderr:
            return f"exit status {self.returncode}: out of memory (limit {limits.memory_bytes >> 20} MiB)"
        if "File too large" in self.stderr:
            return f"exit status {self.returncode}: a file reached the size limit ({limits.file_bytes >> 10} KiB)"
        if (sig := self.signal) is not None:
            name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else f"signal {sig}"
            what = _SIGNALS.get(sig, "ended by a signal")
            if sig == signal.SIGXCPU or (sig == signal.SIGKILL and self.duration_s >= limits.cpu_s):
                what = f"stopped at the CPU time limit of {limits.cpu_s} s"
            elif sig == signal.SIGXFSZ:
                what = f"stopped at the file size limit of {limits.file_bytes >> 10} KiB"
            return f"{what} ({name})"
        if self.returncode == 0:
            return "exit status 0 (success)"
        return f"exit status {self.returncode} (an error: see stderr)"

    def report(self) -> str:
        """The run for a person or a model: status, time, isolation, then stdout and stderr."""
        cut = " (output cut)" if self.truncated else ""
        parts = [f"{self.status}; {self.duration_s:.2f} s; sandbox: {self.isolation}{cut}"]
        parts.append(f"stdout:\n{self.stdout}" if self.stdout else "stdout: (empty)")
        parts.append(f"stderr:\n{self.stderr}" if self.stderr else "stderr: (empty)")
        return "\n".join(parts)


def _python() -> str:
    for path in PYTHONS:
        if os.access(path, os.X_OK):
            return path
    raise SandboxError(f"No system Python at {' or '.join(PYTHONS)} for the sandbox to run; install python3.")


def _bwrap_args(scratch: Path, limits: Limits) -> list[str]:
    args = ["bwrap", "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session"]
    args += ["--hostname", "sandbox", "--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    args += ["--proc", "/proc", "--dev", "/dev", "--size", str(limits.scratch_bytes), "--tmpfs", "/tmp"]
    args += ["--size", str(limits.scratch_bytes), "--tmpfs", "/scratch"]
    args += ["--ro-bind", str(scratch / "main.py"), "/scratch/main.py", "--chdir", "/scratch", "--clearenv"]
    args += ["--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/scratch", "--setenv", "LANG", "C.UTF-8"]
    return [*args, "--"]


def _unshare_args(scratch: Path, limits: Limits) -> list[str]:
    args = ["unshare", "--user", "--map-root-user", "--net", "--pid", "--fork", "--kill-child", "--mount-proc", "--"]
    # A shell as the namespace's init: the program must not be PID 1, which ignores signals such as SIGXCPU.
    return [*args, "/bin/sh", "-c", '"$@"; exit $?', "sh"]


_ISOLATIONS = {"bwrap": _bwrap_args, "unshare": _unshare_args}


def _command(isolation: str, scratch: Path, limits: Limits, argv: list[str]) -> list[str]:
    rlimits = [
        f"--cpu={limits.cpu_s}:{limits.cpu_s + 1}",
        f"--as={limits.memory_bytes}",
        f"--nproc={limits.processes}",
        f"--fsize={limits.file_bytes}",
        "--nofile=256",
        "--core=0",
    ]
    return ["prlimit", *rlimits, "--", *_ISOLATIONS[isolation](scratch, limits), *argv]


def _owner() -> int | None:
    """Run as `nobody` when the worker is root (root ignores the process limit and may write anywhere)."""
    return NOBODY if os.geteuid() == 0 else None


@functools.cache
def find_isolation(search_path: str | None = None) -> str:
    """The strongest isolation that works here ("bwrap" or "unshare"), found by trying each once per process.

    Args:
        search_path: where to look for the tools (default: PATH).
    """
    reasons = []
    for name in _ISOLATIONS:
        if shutil.which(name, path=search_path) is None:
            reasons.append(f"{name} is not installed")
            continue
        with tempfile.TemporaryDirectory(prefix="sandbox-probe-") as scratch:
            Path(scratch, "main.py").write_text("")
            _share(Path(scratch))
            command = _command(name, Path(scratch), Limits(), ["/bin/true"])
            try:
                owner = _owner()
                probe = subprocess.run(
                    command,
                    capture_output=True,
                    text=True,
                    timeout=10,
                    env=ENV,
                    user=owner,
                    group=owner,
                    extra_groups=None if owner is None else [],
                )
            except (OSError, subprocess.TimeoutExpired) as ex:
                reasons.append(f"{name} failed: {ex}")
                continue
        if probe.returncode == 0:
            return name
        reasons.append(f"{name} failed: {probe.stderr.strip()[:200]}")
    raise SandboxError(
        "The sandbox cannot be set up here, so no code is run: "
        + "; ".join(reasons)
        + ". Install bubblewrap (apt-get install bubblewrap) and allow user namespaces."
    )


def _share(scratch: Path) -> None:
    """Hand the scratch directory to the user the code runs as."""
    if os.geteuid() == 0:
        for path in (scratch, *scratch.iterdir()):
            os.chown(path, NOBODY, NOBODY)


def _collect(proc: subprocess.Popen[bytes], limits: Limits) -> tuple[bytes, bytes, bool, bool]:
    """Read stdout and stderr up to the cap (draining the rest) until both close or the wall clock runs out."""
    assert proc.stdout is not None and proc.stderr is not None
    kept = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
    truncated = timed_out = False
    deadline = time.monotonic() + limits.wall_s
    with selectors.DefaultSelector() as selector:
        for stream in kept:
            selector.register(stream, selectors.EVENT_READ)
        while selector.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            for key, _ in selector.select(left):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fileobj)
                    continue
                buffer = kept[key.fd]
                room = limits.output_bytes - len(buffer)
                buffer += chunk[: max(room, 0)]
                truncated = truncated or len(chunk) > room
    return bytes(kept[proc.stdout.fileno()]), bytes(kept[proc.stderr.fileno()]), truncated, timed_out


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """End the sandbox and wait until every process in it is gone.

    The launcher's children are the init processes of the sandbox's PID namespace: killing one makes the kernel
    kill every process in the namespace, and the launcher exits only once it has reaped its child, so the wait
    returns when nothing of the program is left (and nothing counts against the next run's process limit).
    """
    if proc.poll() is None:
        with contextlib.suppress(OSError):
            for pid in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split():
                os.kill(int(pid), signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def run_python(code: str, limits: Limits = Limits(), *, isolation: str | None = None) -> Result:
    """Run `code` as a Python program in the sandbox and report how it ended; raises SandboxError if it cannot.

    `isolation` names the kind to use ("bwrap" or "unshare"); by default, the strongest that works here.
    """
    if len(code) > MAX_CODE_CHARS:
        raise SandboxError(f"The program is longer than {MAX_CODE_CHARS} characters; shorten it.")
    kind, python = isolation or find_isolation(), _python()
    scratch = Path(tempfile.mkdtemp(prefix="sandbox-"))
    try:
        (scratch / "main.py").write_text(code)
        _share(scratch)
        main = "/scratch/main.py" if kind == "bwrap" else str(scratch / "main.py")
        command = _command(kind, scratch, limits, [python, "-I", "-B", main])
        started, owner = time.monotonic(), _owner()
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=scratch,
            env=ENV,
            start_new_session=True,  # one process group to kill
            user=owner,
            group=owner,
            extra_groups=None if owner is None else [],
        )
        try:
            out, err, truncated, timed_out = _collect(proc, limits)
        finally:
            _stop(proc)
            assert proc.stdout is not None and proc.stderr is not None
            proc.stdout.close()
            proc.stderr.close()
        return Result(
            kind,
            proc.returncode,
            out.decode(errors="replace"),
            err.decode(errors="replace"),
            truncated,
            timed_out,
            time.monotonic() - started,
            limits,
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
