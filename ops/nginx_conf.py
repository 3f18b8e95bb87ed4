"""nginx's configuration for one run: ops/nginx.conf as it is, with the files a deployment writes beside it.

`make run` with API_INSTANCES above 1 (and the tests) render into a directory of their own: the upstream list
of this run's instances, where to listen, the body and upload sizes the API accepts and, when asked for, the TLS server.
Standard library only, like the rest of what `make run` runs before the venv's packages matter.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

OPS = Path(__file__).resolve().parent
# How long nginx leaves out an instance that failed (max_fails=3 in a row). A rolling restart waits this long after
# each instance is back, so that nginx has taken it in again before the next one goes.
FAIL_TIMEOUT_S = 5
TEMPLATE = OPS / "nginx.conf"
PARTS = OPS / "nginx"


@dataclass(frozen=True)
class Tls:
    """The TLS server: where it listens, and its certificate chain and key (PEM files)."""

    listen: str
    cert: Path
    key: Path


def _size(max_body_bytes: int) -> str:
    """nginx's size for `max_body_bytes`, rounded up to whole KiB."""
    return f"{-(-max_body_bytes // 1024)}k"


def upstream(instances: list[str], *, max_fails: int = 3, fail_timeout_s: int = FAIL_TIMEOUT_S) -> str:
    """The upstream block for `instances` (host:port each)."""
    servers = "".join(
        f"    server {address} max_fails={max_fails} fail_timeout={fail_timeout_s}s;\n" for address in instances
    )
    return f"upstream agentic_api {{\n    least_conn;\n{servers}    keepalive 64;\n    keepalive_timeout 60s;\n}}\n"


def render(
    out: Path,
    *,
    listen: str,
    instances: list[str],
    max_body_bytes: int | None = None,
    max_upload_bytes: int | None = None,
    tls: Tls | None = None,
    fail_timeout_s: int = FAIL_TIMEOUT_S,
) -> Path:
    """Write a complete configuration under `out` (conf/ and the prefix's logs/ and temp/); returns nginx.conf.

    Run it with `nginx -p <out> -c <returned path> -e logs/error.log`.
    """
    conf = out / "conf"
    if conf.exists():
        shutil.rmtree(conf)
    (conf / "nginx" / "tls").mkdir(parents=True)
    for name in ("logs", "temp"):
        (out / name).mkdir(parents=True, exist_ok=True)
    main = TEMPLATE.read_text()
    if max_body_bytes is not None:
        main, found = re.subn(
            r"client_(max_body_size|body_buffer_size) \S+;",
            lambda m: f"client_{m.group(1)} {_size(max_body_bytes)};",
            main,
        )
        assert found == 2, "ops/nginx.conf must set client_max_body_size and client_body_buffer_size"
    (conf / "nginx.conf").write_text(main)
    locations = (PARTS / "locations.conf").read_text()
    if max_upload_bytes is not None:
        locations, found = re.subn(
            r"client_max_body_size \S+;", f"client_max_body_size {_size(max_upload_bytes)};", locations
        )
        assert found == 1, "ops/nginx/locations.conf must set client_max_body_size for uploads"
    (conf / "nginx" / "locations.conf").write_text(locations)
    (conf / "nginx" / "listen.conf").write_text(f"listen {listen};\n")
    (conf / "nginx" / "upstream.conf").write_text(upstream(instances, fail_timeout_s=fail_timeout_s))
    if tls is not None:
        server = (PARTS / "tls.conf.example").read_text()
        for pattern, value in (
            (r"listen\s+\S+\s+ssl http2;", f"listen {tls.listen} ssl http2;"),
            (r"ssl_certificate\s+\S+;", f"ssl_certificate {tls.cert};"),
            (r"ssl_certificate_key\s+\S+;", f"ssl_certificate_key {tls.key};"),
        ):
            server, found = re.subn(pattern, value, server)
            assert found == 1, f"ops/nginx/tls.conf.example must have one line like {value!r}"
        (conf / "nginx" / "tls" / "agentic.conf").write_text(server)
    return conf / "nginx.conf"


def argv(nginx: str, out: Path, conf: Path, *, test: bool = False) -> list[str]:
    """The command that runs (or with `test`, checks) the configuration at `conf`, in the foreground."""
    return [
        nginx,
        "-p",
        f"{out}/",
        "-c",
        str(conf),
        "-e",
        "logs/error.log",
        "-g",
        "daemon off;",
        *(["-t"] if test else []),
    ]
