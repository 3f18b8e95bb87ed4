"""Refreshes the vendored Swagger UI and ReDoc files in api/static/vendor/ and records where they came from.

    python ops/vendor.py                          # download the versions MANIFEST.json names again
    python ops/vendor.py swagger-ui-dist@5.36.0   # move one package to another version (or @latest)
    python ops/vendor.py --check                  # verify the files against MANIFEST.json, offline

A refresh runs `npm pack` for each package into a temporary directory, copies the files below out of the tarballs
and writes MANIFEST.json with each file's package, version, path inside the package and sha256. The API checks
the served files against those checksums when it starts (api/resources/api_docs.py).

Standard library only, like the rest of ops/; a refresh needs `npm` on PATH, `--check` needs nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENDOR = ROOT / "api" / "static" / "vendor"
MANIFEST = "MANIFEST.json"
# name in api/static/vendor/ -> (npm package, path inside the package). The licences travel with the code:
# each bundle's .LICENSE.txt holds the notices of the libraries compiled into it.
FILES = {
    "swagger-ui-bundle.js": ("swagger-ui-dist", "swagger-ui-bundle.js"),
    "swagger-ui-bundle.js.LICENSE.txt": ("swagger-ui-dist", "swagger-ui-bundle.js.LICENSE.txt"),
    "swagger-ui.css": ("swagger-ui-dist", "swagger-ui.css"),
    "swagger-ui.LICENSE": ("swagger-ui-dist", "LICENSE"),
    "swagger-ui.NOTICE": ("swagger-ui-dist", "NOTICE"),
    "redoc.standalone.js": ("redoc", "bundles/redoc.standalone.js"),
    "redoc.standalone.js.LICENSE.txt": ("redoc", "bundles/redoc.standalone.js.LICENSE.txt"),
    "redoc.LICENSE": ("redoc", "LICENSE"),
}
# Used only when there is no MANIFEST.json to take the versions from.
DEFAULT_VERSIONS = {"swagger-ui-dist": "5.35.0", "redoc": "2.5.4"}


class VendorError(Exception):
    """Raised when a package cannot be downloaded or lacks a file that FILES expects of it."""


def sha256(data: bytes) -> str:
    """The hex sha256 of `data`."""
    return hashlib.sha256(data).hexdigest()


def read_manifest(directory: Path) -> dict[str, dict[str, str]]:
    """The `files` entry of `directory`/MANIFEST.json: name -> {package, version, path, sha256}."""
    return json.loads((directory / MANIFEST).read_text())["files"]


def check(directory: Path) -> list[str]:
    """What differs between `directory` and its MANIFEST.json (an empty list when nothing does)."""
    try:
        files = read_manifest(directory)
    except (OSError, ValueError, KeyError) as ex:
        return [f"{directory / MANIFEST} cannot be read ({ex}); run `python ops/vendor.py` to write it."]
    problems = []
    for name, entry in sorted(files.items()):
        path = directory / name
        if not path.is_file():
            problems.append(f"{path} is missing.")
        elif (digest := sha256(path.read_bytes())) != entry["sha256"]:
            problems.append(f"{path} has sha256 {digest}; MANIFEST.json records {entry['sha256']}.")
    for path in sorted(directory.iterdir()):
        if path.name != MANIFEST and path.name not in files:
            problems.append(f"{path} is not in MANIFEST.json: add it to FILES in ops/vendor.py, or remove it.")
    return problems


def pack(spec: str, into: Path) -> tuple[str, Path]:
    """Download the npm package `spec` (name@version) into `into`; returns (resolved version, tarball)."""
    npm = shutil.which("npm")
    if npm is None:
        raise VendorError("npm is not on PATH. Install Node.js and npm (apt-get install npm) to refresh the assets.")
    done = subprocess.run(
        [npm, "pack", spec, "--json", "--pack-destination", str(into)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise VendorError(f"`npm pack {spec}` failed: {done.stderr.strip()}")
    (info,) = json.loads(done.stdout)
    return info["version"], into / info["filename"]


def extract(tarball: Path, paths: set[str]) -> dict[str, bytes]:
    """The contents of `paths` (relative to the package root) in an npm tarball, read without extracting it."""
    found = {}
    with tarfile.open(tarball, "r:gz") as tar:
        for path in paths:
            try:
                member = tar.extractfile(f"package/{path}")
            except KeyError:
                member = None
            if member is None:
                raise VendorError(f"{tarball.name} has no file {path}; update FILES in ops/vendor.py.")
            found[path] = member.read()
    return found


def refresh(directory: Path, versions: dict[str, str]) -> dict[str, dict[str, str]]:
    """Download `versions` (package -> version or tag), copy FILES into `directory`, and write its manifest."""
    files: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory(prefix="vendor-") as tmp:
        for package, wanted in sorted(versions.items()):
            version, tarball = pack(f"{package}@{wanted}", Path(tmp))
            names = {name: path for name, (pkg, path) in FILES.items() if pkg == package}
            contents = extract(tarball, set(names.values()))
            for name, path in names.items():
                data = contents[path]
                files[name] = {"package": package, "version": version, "path": path, "sha256": sha256(data)}
                (directory / name).write_bytes(data)
            print(f"vendor: {package}@{version}: {', '.join(sorted(names))}")
    # The manifest last: an interrupted refresh leaves files that --check and the API refuse.
    text = json.dumps({"files": dict(sorted(files.items()))}, indent=2) + "\n"
    (directory / MANIFEST).write_text(text)
    return files


def wanted_versions(directory: Path, specs: list[str]) -> dict[str, str]:
    """The version of each package: from the command line (name@version), else MANIFEST.json, else the default."""
    try:
        recorded = {entry["package"]: entry["version"] for entry in read_manifest(directory).values()}
    except (OSError, ValueError, KeyError):
        recorded = {}
    versions = {package: recorded.get(package, default) for package, default in DEFAULT_VERSIONS.items()}
    for spec in specs:
        package, sep, version = spec.rpartition("@")
        if not sep or package not in versions:
            raise VendorError(f"{spec!r}: give PACKAGE@VERSION with PACKAGE one of {', '.join(sorted(versions))}.")
        versions[package] = version
    return versions


def main(argv: list[str] | None = None) -> int:
    """Refresh or check the vendored assets; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "specs",
        nargs="*",
        metavar="PACKAGE@VERSION",
        help="a version to move to (default: the versions in MANIFEST.json)",
    )
    parser.add_argument("--check", action="store_true", help="verify the files against MANIFEST.json (no network)")
    parser.add_argument("--dir", type=Path, default=VENDOR, help="the vendor directory (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.check:
        problems = check(args.dir)
        for problem in problems:
            print(f"vendor: {problem}", file=sys.stderr)
        if problems:
            print("vendor: run `python ops/vendor.py` to download the recorded versions again.", file=sys.stderr)
            return 1
        print(f"vendor: {len(read_manifest(args.dir))} files match {args.dir / MANIFEST}")
        return 0
    try:
        refresh(args.dir, wanted_versions(args.dir, args.specs))
    except VendorError as ex:
        print(f"vendor: {ex}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
