"""A real Prometheus for tests: configured by `agentic prometheus-config` (as make run does), queried over HTTP."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import httpx

from tests.stack import Proc, Stack, free_port


class Prometheus:
    """One prometheus server scraping the given targets every second."""

    def __init__(self, stack: Stack, workdir: Path, targets: dict[str, list[int]], **options: str) -> None:
        self.port = free_port()
        args = ["prometheus-config", "--out", str(workdir), "--self", f"127.0.0.1:{self.port}", "--interval", "1s"]
        for job, ports in targets.items():
            args += [f"--{job}=127.0.0.1:{port}" for port in ports]
        for name, value in options.items():
            args += [f"--{name.replace('_', '-')}", value]
        done = stack.cli(*args)
        assert done.returncode == 0, done.stderr
        binary = shutil.which("prometheus") or "prometheus"
        argv = [
            binary,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            f"--storage.tsdb.path={workdir / 'data'}",
        ]
        self.proc = Proc(f"prometheus-{self.port}", argv, {}, workdir)

    def start(self) -> Prometheus:
        """Start it (its targets come up on their first scrape)."""
        self.proc.start()
        return self

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector."""
        reply = httpx.get(f"http://127.0.0.1:{self.port}/api/v1/query", params={"query": expr}, timeout=5).json()
        assert reply["status"] == "success", reply
        return list(reply["data"]["result"])

    def value(self, expr: str) -> float | None:
        """The single value of an instant query, or None when it has none."""
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        """Stop it."""
        self.proc.stop()
