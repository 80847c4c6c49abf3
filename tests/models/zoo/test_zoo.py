"""The zoo's fetch layer and CLI: pinned archives, clear errors, artifacts where the server looks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from models.core.artifact import sha256_file
from models.core.errors import ZooError
from models.core.fetch import Fetcher, Package
from models.zoo import entries, find

ERS = str(Path(sys.executable).parent / "ers")


def test_zoo_lists_the_required_encoders() -> None:
    zoo = entries()
    for key, modality, dim in [("minilm-l6@1", "text", 384), ("minilm-l3@1", "text", 384),
                               ("effnet-lite0@1", "image", 1280), ("face-resnet@1", "face", 128)]:  # fmt: skip
        assert zoo[key].modality == modality and zoo[key].dim == dim and zoo[key].license
    assert find("minilm-l6").key == "minilm-l6@1"
    with pytest.raises(ZooError, match="not in the zoo"):
        find("gpt-17")


def test_a_cached_archive_with_the_wrong_sha256_is_refused(tmp_path: Path) -> None:
    (tmp_path / "pkg-1.0.tar.gz").write_bytes(b"tampered")
    package = Package("pypi", "pkg", "1.0", "pkg-1.0.tar.gz", "0" * 64, sdist=True)
    with pytest.raises(ZooError, match="does not match the pinned"):
        Fetcher(tmp_path).fetch(package)
    assert not (tmp_path / "pkg-1.0.tar.gz").exists()  # the bad file is not kept
    good = tmp_path / "ok-1.0.tar.gz"
    good.write_bytes(b"fine")
    assert Fetcher(tmp_path).fetch(Package("pypi", "ok", "1.0", good.name, sha256_file(good))) == good


def test_missing_npm_and_unknown_packages_give_clear_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # a machine without npm
    with pytest.raises(ZooError, match="npm is not installed"):
        Fetcher(tmp_path).fetch(Package("npm", "@vladmandic/face-api", "1.7.15", "x.tgz", "0" * 64))
    monkeypatch.undo()
    missing = Package("pypi", "ers-no-such-package-xyz", "0.0.1", "nope.whl", "0" * 64)
    with pytest.raises(ZooError, match="pip could not download ers-no-such-package-xyz"):
        Fetcher(tmp_path).fetch(missing)


def test_cli_pulls_into_the_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "data"
    # two pulls of the same model at once (parallel training jobs do this): they take turns, both succeed
    command = [ERS, "zoo", "pull", "effnet-lite0", "--data-dir", str(data)]
    pulls = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    for pull in pulls:
        out, _ = pull.communicate(timeout=600)
        assert pull.returncode == 0, out
        assert "pulled effnet-lite0@1" in out
    assert (data / "models" / "effnet-lite0@1" / "model.onnx").exists()
    assert not list((data / "models").glob(".staging-*"))
    r = subprocess.run([ERS, "zoo", "list", "--data-dir", str(data)], capture_output=True, text=True, timeout=120,
                       env={"COLUMNS": "200", "PATH": str(Path(ERS).parent)})  # fmt: skip
    row = next(line for line in r.stdout.splitlines() if "effnet-lite0@1" in line)
    assert "yes" in row
    r = subprocess.run([ERS, "zoo", "pull", "no-such-model", "--data-dir", str(data)],
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 1 and "not in the zoo" in r.stderr
