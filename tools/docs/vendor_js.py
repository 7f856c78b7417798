"""The two third-party scripts the docs site serves itself, fetched from npm at build time.

The site and its PDF must work with no internet (councils read the docs on locked-down
machines; CI is offline), but Material for MkDocs loads two scripts from a CDN by default:

- Mermaid, which draws the diagrams (Material uses a ``mermaid`` already on the page);
- iframe-worker, which lets search run when the site is opened from a folder (the
  ``offline`` plugin uses a polyfill already listed in ``extra.polyfills``).

This fetches pinned releases of both with ``npm pack`` (the tarball only: no dependencies,
no install scripts), checks each against the integrity hash recorded here, and keeps the
few files the site needs, with their licences, in a cache folder outside the repository.
Run it on its own to fill the cache ahead of an offline build::

    python tools/docs/vendor_js.py
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    integrity: str  # `npm view NAME@VERSION dist.integrity`
    files: dict[str, str]  # member of the tarball -> path in the built site


PACKAGES = (
    # Material drives Mermaid 11's API: stay on the 11.x line when updating.
    Package(
        "mermaid",
        "11.17.2",
        "sha512-V6K3C8EBdEsPFZXSKMJe6ppQOENxuHARr9GvHX4hh47lAbhMRD9qf4oEK7LoaRQxULMa80/qt5gHO73aCleBBg==",
        {
            "package/dist/mermaid.min.js": "javascripts/mermaid.min.js",
            "package/LICENSE": "javascripts/mermaid.LICENSE.txt",
        },
    ),
    Package(
        "iframe-worker",
        "1.0.4",
        "sha512-roeaaI+Lg1LJNfgpCjoRe/+WzEjy9+Z08LoEvu85MCPbBjwm+qXz8Ag5U05lHa6V1CysZyGzE0SOkAtSUA5q7Q==",
        {
            "package/shim/index.js": "javascripts/iframe-worker-shim.js",
            "package/LICENSE": "javascripts/iframe-worker.LICENSE.txt",
        },
    ),
)


class VendorUnavailable(RuntimeError):
    """A pinned package could not be fetched; the message says what to do."""


def cache_root() -> Path:
    """``$CSC_DOCS_CACHE`` if set, else ``~/.cache/csc-api-pipeline-docs``."""
    return Path(os.environ.get("CSC_DOCS_CACHE") or Path.home() / ".cache" / "csc-api-pipeline-docs")


def _integrity(path: Path) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode("ascii")


def _cached(package: Package) -> dict[str, Path]:
    folder = cache_root() / f"{package.name}-{package.version}"
    return {site: folder / Path(site).name for site in package.files.values()}


def _fetch(package: Package) -> None:
    npm = shutil.which("npm")
    spec = f"{package.name}@{package.version}"
    if npm is None:
        raise VendorUnavailable(
            f"npm is needed once to fetch {spec} for the docs (install Node.js and npm), or run "
            f"'python tools/docs/vendor_js.py' on a machine that has it and copy {cache_root()} here"
        )
    targets = _cached(package)
    with tempfile.TemporaryDirectory(prefix="docs-vendor-") as scratch:
        result = subprocess.run(  # noqa: S603 - a fixed argument list, no shell
            [npm, "pack", spec, "--json", "--pack-destination", scratch],
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        if result.returncode != 0:
            raise VendorUnavailable(f"npm pack {spec} failed: {result.stderr.strip()[-500:]}")
        tarball = Path(scratch) / json.loads(result.stdout)[0]["filename"]
        found = _integrity(tarball)
        if found != package.integrity:
            raise VendorUnavailable(f"{spec} does not match its pinned integrity hash (got {found})")
        staged = Path(scratch) / "staged"
        staged.mkdir()
        with tarfile.open(tarball, "r:gz") as archive:
            for member, site in package.files.items():
                source = archive.extractfile(member)
                if source is None:
                    raise VendorUnavailable(f"{spec} has no {member}")
                (staged / Path(site).name).write_bytes(source.read())
        for target in targets.values():
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged / target.name, target)


def ensure() -> dict[str, Path]:
    """Path in the built site -> cached file, for every vendored file; fetches what is missing."""
    files: dict[str, Path] = {}
    for package in PACKAGES:
        cached = _cached(package)
        if not all(path.is_file() and path.stat().st_size > 0 for path in cached.values()):
            _fetch(package)
        files.update(cached)
    return files


if __name__ == "__main__":
    try:
        for site_path, cached_path in ensure().items():
            print(f"{site_path}  <-  {cached_path}")
    except VendorUnavailable as exc:
        sys.exit(f"error: {exc}")
