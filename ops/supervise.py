"""A small process supervisor: each child in its own process group, restarted with backoff when it exits.

`ops/run.py` (what `make run` runs) says which processes make up the stack; this module only knows processes.
Standard library only, and it never imports our code, so it keeps working whatever state the code is in.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TextIO


@dataclass(frozen=True)
class Policy:
    """How restarts are paced, when to give up, and how long a stop may take."""

    first_delay_s: float = 1.0
    max_delay_s: float = 30.0
    stable_after_s: float = 60.0
    max_restarts: int = 5
    stop_timeout_s: float = 30.0

    def delay(self, restart: int) -> float:
        """Seconds to wait before restart number `restart` (1, 2, ...): doubling from the first, capped."""
        return min(self.max_delay_s, self.first_delay_s * 2.0 ** (restart - 1))

    def gives_up(self, restarts: int) -> bool:
        """True when a child that has been restarted `restarts` times in a row has failed once too often."""
        return restarts >= self.max_restarts


def _parent_death_signal() -> Callable[[], None] | None:
    """A `preexec_fn` that has Linux send the child SIGTERM if the supervisor dies, even by SIGKILL.

    Without it a killed supervisor would leave its children holding the ports, and the next `make run` would
    only find them busy. None where prctl is missing (not Linux).
    """
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def set_signal() -> None:
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the supervisor died before prctl took effect
            os._exit(1)

    return set_signal


class Child:
    """One supervised process: its command, log file and pid file, and its restart history."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        log_path: Path,
        pid_path: Path,
        *,
        stops_last: bool = False,
    ) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.pid_path = pid_path
        # Set for Redis: it stops after the others, which may still write while they shut down.
        self.stops_last = stops_last
        self.popen: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.restarts = 0
        self.restart_at: float | None = None

    def start(self, now: float) -> None:
        """Start it in a new session (so a terminal's Ctrl-C reaches only the supervisor), logging to its file."""
        fresh = self.popen is None
        with open(self.log_path, "wb" if fresh else "ab") as log:
            if not fresh:
                log.write(f"\n--- run: restarting {self.name} (restart {self.restarts}) ---\n".encode())
                log.flush()
            self.popen = subprocess.Popen(
                self.argv,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_parent_death_signal(),
            )
        self.started_at = now
        # Written whole, then renamed: a reader never sees a half-written file.
        partial = self.pid_path.with_suffix(".pid.tmp")
        partial.write_text(f"{self.popen.pid}\n")
        partial.replace(self.pid_path)

    @property
    def pid(self) -> int:
        """The PID of its process, which is also its process group's id."""
        assert self.popen is not None
        return self.popen.pid

    def exit_code(self) -> int | None:
        """Its exit code (negative: killed by that signal), or None while it runs or waits for a restart."""
        if self.popen is None or self.restart_at is not None:
            return None
        return self.popen.poll()

    def kill_group(self, sig: int) -> None:
        """Send `sig` to every process left in its group (a worker's pool, gunicorn's workers)."""
        if self.popen is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, sig)


class Supervisor:
    """Starts children, restarts the ones that exit, and stops them all on SIGINT or SIGTERM."""

    def __init__(
        self,
        policy: Policy,
        *,
        clock: Callable[[], float] = time.monotonic,
        out: TextIO = sys.stdout,
        err: TextIO = sys.stderr,
    ) -> None:
        self.policy = policy
        self.children: list[Child] = []
        self.clock = clock
        self.out = out
        self.err = err
        self.stop_requested = False
        self.reload_requested = False  # SIGHUP: the caller restarts what it chooses, one at a time
        self.hurry = False
        self.failure: str | None = None
        self._wake_r, self._wake_w = os.pipe()

    def install_signals(self) -> None:
        """Turn SIGINT and SIGTERM into a graceful stop and SIGHUP into `reload_requested`, and wake the loop on
        those and on SIGCHLD."""
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so that the wake-up fd hears of it

    def _on_stop(self, signum: int, frame: object) -> None:
        # A second Ctrl-C while stopping means: do not wait for the graceful part.
        self.hurry = self.stop_requested
        self.stop_requested = True

    def _on_reload(self, signum: int, frame: object) -> None:
        self.reload_requested = True

    def start(self, child: Child) -> Child:
        """Start `child` and supervise it from now on."""
        self.children.append(child)
        child.start(self.clock())
        return child

    def supervise(
        self, until: Callable[[], object] = lambda: False, timeout: float = math.inf, interval: float = 0.2
    ) -> bool:
        """Restart children as they exit until `until()` is true (then True).

        Returns False when `timeout` seconds pass first, when a stop is asked for (`stop_requested`) or when a
        child failed too often (`failure` says which).
        """
        deadline = self.clock() + timeout
        while not self.stop_requested and self.failure is None:
            self._check()
            if self.failure is not None or self.stop_requested:
                break
            if until():
                return True
            now = self.clock()
            if now >= deadline:
                return False
            wake = min([deadline, now + interval] + [c.restart_at for c in self.children if c.restart_at])
            self._sleep(wake - now)
        return False

    def restart(self, child: Child, ready: Callable[[], object], timeout: float) -> bool:
        """Stop `child` gracefully (SIGTERM, then SIGKILL after the stop timeout) and start it again at once, not
        counted as a failure; then supervise until `ready()` (True) or `timeout` seconds (False)."""
        if child.popen is not None and child.restart_at is None and child.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGTERM)
            deadline = self.clock() + self.policy.stop_timeout_s
            while child.popen.poll() is None and self.clock() < deadline and not self.hurry:
                self._sleep(0.1)
            if child.popen.poll() is None:
                print(f"run: {child.name} did not stop in time; killing it", file=self.err, flush=True)
        child.kill_group(signal.SIGKILL)
        if child.popen is not None:
            child.popen.wait()
        if self.stop_requested:
            return False
        child.restart_at = None
        child.restarts = 0
        child.start(self.clock())
        print(f"run: {child.name} restarted (pid {child.pid})", file=self.err, flush=True)
        return self.supervise(ready, timeout=timeout)

    def _check(self) -> None:
        """Start the children whose restart is due; schedule a restart (or give up) for those that exited."""
        now = self.clock()
        for child in self.children:
            if child.restart_at is not None:
                if now >= child.restart_at:
                    child.restart_at = None
                    try:
                        child.start(now)
                    except OSError as ex:  # its program is gone, or VAR_DIR is
                        self.failure = f"run: giving up on {child.name}: it cannot be started again ({ex})"
                        return
                    print(f"run: {child.name} restarted (pid {child.pid})", file=self.err, flush=True)
                continue
            code = child.exit_code()
            if code is None:
                continue
            child.kill_group(signal.SIGKILL)  # what it leaves behind could hold its port or its jobs
            if now - child.started_at >= self.policy.stable_after_s:
                child.restarts = 0
            if self.policy.gives_up(child.restarts):
                self.failure = (
                    f"run: giving up on {child.name}: it exited with code {code} after {child.restarts} "
                    f"restarts in a row, none of which stayed up {self.policy.stable_after_s:g} s. "
                    f"See {child.log_path}"
                )
                return
            child.restarts += 1
            delay = self.policy.delay(child.restarts)
            child.restart_at = now + delay
            print(
                f"run: {child.name} exited with code {code}; restarting in {delay:g} s (restart {child.restarts})",
                file=self.err,
                flush=True,
            )

    def _sleep(self, seconds: float) -> None:
        """Wait up to `seconds`, or less when a signal arrives (a child exited, or a stop was asked for)."""
        readable, _, _ = select.select([self._wake_r], [], [], max(0.0, seconds))
        if readable:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wake_r, 4096):
                    pass

    def stop(self) -> None:
        """Stop every child: SIGTERM in reverse start order, wait, SIGKILL what is left of each group.

        The SIGTERM goes to each group's leader, whose shutdown is its own business (gunicorn drains its
        workers, Celery finishes running jobs); only stragglers get the group-wide SIGKILL.
        """
        for child in self.children:
            child.restart_at = None
        started = [c for c in reversed(self.children) if c.popen is not None]
        if not started:
            return
        print("\nrun: stopping...", file=self.out, flush=True)
        for wave in ([c for c in started if not c.stops_last], [c for c in started if c.stops_last]):
            self._stop_wave(wave)
        for child in started:
            child.pid_path.unlink(missing_ok=True)
        print("run: stopped.", file=self.out, flush=True)

    def _stop_wave(self, children: list[Child]) -> None:
        running = [c for c in children if c.exit_code() is None]
        for child in running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGTERM)
        deadline = self.clock() + self.policy.stop_timeout_s
        while any(c.exit_code() is None for c in running) and self.clock() < deadline and not self.hurry:
            self._sleep(0.1)
        for child in running:
            if child.exit_code() is None:
                print(f"run: {child.name} did not stop in time; killing it", file=self.err, flush=True)
            child.kill_group(signal.SIGKILL)
            assert child.popen is not None
            child.popen.wait()
