"""Vendored Swagger UI and ReDoc match MANIFEST.json and are served from memory with their sha256 as ETag; the
lock pins exactly what pyproject.toml declares, and uvicorn runs on uvloop and httptools."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import httpx
import pytest
import uvloop
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from api.openapi import ASSETS
from api.resources.api_docs import VENDOR, AssetError, AssetResource
from api.server import ApiWorker
from tests.stack import ROOT, RedisServer, Stack

MANIFEST = json.loads((VENDOR / "MANIFEST.json").read_text())["files"]
LOCK = (ROOT / "requirements.lock").read_text()  # the runtime packages: make run, the image
DEV_LOCK = (ROOT / "requirements-dev.lock").read_text()  # runtime + the dev extra: make test, lint, bench
# A pinned line of the lock ("name==version \") and the "# via" block after it.
PIN = re.compile(
    r"^([A-Za-z0-9._-]+)==(\S+) \\\n((?:    --hash=sha256:[0-9a-f]{64}(?: \\)?\n)+)((?:    #.*\n)*)", re.MULTILINE
)


def vendor_check(directory: Path) -> subprocess.CompletedProcess[str]:
    """`ops/vendor.py --check` on `directory`."""
    return subprocess.run(
        [sys.executable, str(ROOT / "ops" / "vendor.py"), "--check", "--dir", str(directory)],
        capture_output=True,
        text=True,
        timeout=30,
    )


def locked(lock: str = LOCK) -> dict[str, tuple[str, set[str]]]:
    """Each package of a lock: its version and what it is there for (the names under `# via`)."""
    pins: dict[str, tuple[str, set[str]]] = {}
    for name, version, _, via in PIN.findall(lock):
        parents = set(re.findall(r"^    #[ \t]+(?:via[ \t]+)?([A-Za-z0-9._-]+)", via, re.MULTILINE)) - {"via"}
        pins[canonicalize_name(name)] = (version, parents)
    return pins


@pytest.fixture(scope="module")
def api(redis_server: RedisServer, logdir: Path) -> Iterator[Stack]:
    """A real API process (gunicorn + uvicorn) on a free port; nothing else is needed to serve assets."""
    stack = Stack(redis_server.url, logdir)
    stack.api(workers=1)
    yield stack
    stack.stop()


def test_vendored_files_match_the_manifest_and_every_served_asset_is_in_it() -> None:
    done = vendor_check(VENDOR)
    assert done.returncode == 0, done.stderr
    assert set(ASSETS) <= set(MANIFEST)
    for name, entry in MANIFEST.items():
        assert entry["package"] in {"swagger-ui-dist", "redoc"} and re.fullmatch(r"\d+\.\d+\.\d+", entry["version"])
        assert entry["path"] and hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == entry["sha256"]


def test_vendor_check_fails_when_one_byte_changes(tmp_path: Path) -> None:
    copy = tmp_path / "vendor"
    shutil.copytree(VENDOR, copy)
    css = copy / "swagger-ui.css"
    data = bytearray(css.read_bytes())
    data[100] ^= 1
    css.write_bytes(bytes(data))
    done = vendor_check(copy)
    assert done.returncode == 1
    assert "swagger-ui.css has sha256" in done.stderr and "ops/vendor.py" in done.stderr


def test_api_refuses_to_load_an_asset_that_differs_from_the_manifest(tmp_path: Path) -> None:
    copy = tmp_path / "vendor"
    shutil.copytree(VENDOR, copy)
    (copy / "redoc.standalone.js").write_bytes(b"// not what npm shipped\n")
    with pytest.raises(AssetError, match=r"redoc\.standalone\.js has sha256 .* Run `python ops/vendor.py`"):
        AssetResource(copy)
    (copy / "MANIFEST.json").unlink()
    with pytest.raises(AssetError, match=r"Cannot read .*MANIFEST\.json"):
        AssetResource(tmp_path / "vendor")


@pytest.mark.parametrize("name", sorted(ASSETS))
def test_each_asset_is_served_with_its_sha256_as_etag_and_304_when_the_client_has_it(api: Stack, name: str) -> None:
    sha = MANIFEST[name]["sha256"]
    url = f"{api.url}/api/v1/docs-assets/{name}"
    resp = httpx.get(url, timeout=10)
    assert resp.status_code == 200
    assert hashlib.sha256(resp.content).hexdigest() == sha
    assert resp.headers["etag"] == f'"{sha}"'
    assert resp.headers["cache-control"] == "public, max-age=86400"
    assert resp.headers["content-type"].startswith(ASSETS[name])
    for current in (f'"{sha}"', f'W/"{sha}"', f'"other", "{sha}"', "*"):
        again = httpx.get(url, headers={"If-None-Match": current}, timeout=10)
        assert again.status_code == 304 and again.content == b"", current
        assert again.headers["etag"] == f'"{sha}"' and again.headers["cache-control"] == "public, max-age=86400"
    stale = httpx.get(url, headers={"If-None-Match": '"0000"'}, timeout=10)
    assert stale.status_code == 200 and hashlib.sha256(stale.content).hexdigest() == sha


def test_an_unknown_asset_is_404(api: Stack) -> None:
    resp = httpx.get(f"{api.url}/api/v1/docs-assets/swagger-ui.LICENSE", timeout=10)
    assert resp.status_code == 404 and resp.json()["code"] == "not_found"


@pytest.mark.parametrize("lock", [LOCK, DEV_LOCK], ids=["runtime", "dev"])
def test_the_lock_pins_every_package_exactly_with_hashes(lock: str) -> None:
    requirement_lines = [line for line in lock.splitlines() if line and not line.startswith((" ", "#"))]
    assert requirement_lines and all(re.fullmatch(r"[A-Za-z0-9._-]+==\S+ \\", line) for line in requirement_lines)
    assert len(locked(lock)) == len(requirement_lines)


@pytest.mark.parametrize("lock, extras", [(LOCK, ()), (DEV_LOCK, ("dev",))], ids=["runtime", "dev"])
def test_the_lock_covers_every_dependency_pyproject_declares_within_its_bounds(
    lock: str, extras: tuple[str, ...]
) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [*project["dependencies"], *(d for extra in extras for d in project["optional-dependencies"][extra])]
    pins = locked(lock)
    for text in declared:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is declared but not locked: run `make lock`"
        assert req.specifier.contains(pins[name][0], prereleases=True), f"{text} vs {pins[name][0]}: run `make lock`"
        for extra in req.extras:  # e.g. redis[hiredis]: what the extra adds is locked too
            for dep in map(Requirement, metadata.requires(req.name) or []):
                if dep.marker is not None and dep.marker.evaluate({"extra": extra}):
                    assert canonicalize_name(dep.name) in pins, f"{text} needs {dep.name}: run `make lock`"


def test_the_dev_lock_is_the_runtime_lock_plus_the_dev_tools() -> None:
    runtime, dev = locked(LOCK), locked(DEV_LOCK)
    assert {name: pin[0] for name, pin in runtime.items()} == {name: dev[name][0] for name in runtime if name in dev}
    assert runtime.keys() <= dev.keys()
    assert not {"pytest", "ruff", "mypy", "playwright", "schemathesis", "uv"} & runtime.keys()


def test_the_lock_leaves_out_what_uvicorn_standard_would_bring() -> None:
    pins = locked()
    assert "watchfiles" not in pins and "websockets" not in pins
    # python-dotenv stays only for pydantic-settings (openapi-spec-validator's, a dev dependency).
    assert pins.get("python-dotenv", ("", set()))[1] <= {"pydantic-settings"}
    for fast in ("uvloop", "httptools"):
        assert "agentic-backend" in pins[fast][1]


def test_the_api_worker_runs_uvicorn_on_uvloop_and_httptools() -> None:
    config = Config(app=lambda scope, receive, send: None, log_config=None, **ApiWorker.CONFIG_KWARGS)
    config.load()
    assert config.http_protocol_class is HttpToolsProtocol
    factory = config.get_loop_factory()
    assert factory is not None
    loop = factory()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()
