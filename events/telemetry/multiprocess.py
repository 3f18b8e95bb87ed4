"""Sharing metrics between forked processes: set up explicitly by each server's start-up hook.

gunicorn's workers and Celery's pool processes each keep their own samples; prometheus-client's multiprocess
mode writes them to files in one directory and the process that serves `/metrics` adds them up. The hook that
runs before the processes fork and before any metric is made (gunicorn's `on_starting`, Celery's
`celeryd_init`) calls `use_directory`; nothing is set up by importing a module. This module makes no metric.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass

from prometheus_client import multiprocess, values

ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client's own setting: where every process writes its samples


@dataclass(frozen=True)
class Directory:
    """The directory samples are shared through; `owned`: made for this server, so removed when it stops."""

    path: str
    owned: bool

    def remove(self) -> None:
        """Remove the directory if this server made it."""
        if self.owned:
            shutil.rmtree(self.path, ignore_errors=True)


_shared: Directory | None = None  # set by `use_directory`: this process's one record of whether samples are shared


def use_directory(given: str | None, *, prefix: str) -> Directory:
    """Share samples through `given` (an operator's directory: a previous run's files in it are dropped, or they
    would be counted again), or through a new directory of our own named `prefix`….

    Call it before any metric exists in this process and before the processes that share it fork.
    """
    if given:
        os.makedirs(given, exist_ok=True)
        for name in os.listdir(given):
            if name.endswith(".db"):
                os.unlink(os.path.join(given, name))
        directory = Directory(given, owned=False)
    else:
        directory = Directory(tempfile.mkdtemp(prefix=prefix), owned=True)
    os.environ[ENV] = directory.path  # read by prometheus-client when each value is made, here and after forks
    values.ValueClass = values.get_value_class()  # computed when prometheus-client was imported, before this call
    global _shared
    _shared = directory  # kept by the processes forked after this call
    return directory


def in_use() -> str | None:
    """The shared directory, or None when this process keeps its samples alone."""
    return _shared.path if _shared else None


def process_dead(pid: int) -> None:
    """Drop the live gauges of a process that exited (its counters stay counted)."""
    if in_use():
        multiprocess.mark_process_dead(pid)
