"""nginx's configuration for one run: ops/nginx.conf as it is, with the files a deployment writes beside it.

`make run` with API_INSTANCES above 1 (and the tests) render into a directory of their own: the upstream list
of this run's instances, where to listen, the body and upload sizes the API accepts and, when asked for, the TLS server.
Standard library only, except for the upload limit's multipart allowance, which is api/uploads.py's own constant
(`make run` runs this with the venv's Python).
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

OPS = Path(__file__).resolve().parent
ROOT = OPS.parent
# The unprivileged user nginx's workers run as when the master runs as root (nginx's compiled-in default).
WORKER_USER = "nobody"
TEMP_PREFIX = "agentic-nginx-"
TEMP_RECORD = "temp.dir"  # under the prefix: the temporary directory a root run's last render made
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


def form_overhead() -> int:
    """The multipart framing the API allows around an upload's file (api/uploads.py), imported, not copied."""
    if str(ROOT) not in sys.path:
        sys.path.append(str(ROOT))
    from api.uploads import FORM_OVERHEAD

    return FORM_OVERHEAD


def _worker_temp(out: Path) -> Path:
    """A directory for the bodies nginx spools, that its workers (WORKER_USER) can reach and write, for a root run.

    As root, nginx's workers run as `nobody`, and a prefix under a 0700 directory (/root, pytest's
    /tmp/pytest-of-root) is out of their reach: every body over client_body_buffer_size got 500 (open() ...
    Permission denied). Running the workers as the prefix's owner (root) would fix that by giving up the privilege
    drop; a private directory of their own does not: mkdtemp makes it 0700 under /tmp with a name nobody else can
    predict, and it belongs to the worker user only. The previous render's directory is removed.
    """
    remove_temp(out)
    temp = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX))
    worker = pwd.getpwnam(WORKER_USER)
    os.chown(temp, worker.pw_uid, worker.pw_gid)
    (out / TEMP_RECORD).write_text(f"{temp}\n")
    return temp


def remove_temp(out: Path) -> None:
    """Remove the temporary directory a root run's render made for the prefix `out`, once its nginx has stopped."""
    record = out / TEMP_RECORD
    if record.exists():
        temp = Path(record.read_text().strip())
        if temp.parent == Path(tempfile.gettempdir()) and temp.name.startswith(TEMP_PREFIX):
            shutil.rmtree(temp, ignore_errors=True)
        record.unlink()


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

    Uploads may be `max_upload_bytes` of file plus the API's multipart allowance (form_overhead()). Run as root,
    the workers run as WORKER_USER with their temporary files in a directory of their own (_worker_temp). Run it
    with `nginx -p <out> -c <returned path> -e logs/error.log`.
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
    if os.geteuid() == 0:
        temp = _worker_temp(out)
        main, found = re.subn(r"(\w+_temp_path) temp/", lambda m: f"{m.group(1)} {temp}/", main)
        assert found == 5, "ops/nginx.conf must put its five *_temp_path under temp/"
        worker = pwd.getpwnam(WORKER_USER)
        main = f"user {WORKER_USER} {grp.getgrgid(worker.pw_gid).gr_name};\n{main}"
    (conf / "nginx.conf").write_text(main)
    locations = (PARTS / "locations.conf").read_text()
    if max_upload_bytes is not None:
        locations, found = re.subn(
            r"client_max_body_size \S+;",
            f"client_max_body_size {_size(max_upload_bytes + form_overhead())};",
            locations,
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
