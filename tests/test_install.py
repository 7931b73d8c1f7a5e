"""The install namespace (issue #13): a built wheel puts one import package, `streamrl`, into
site-packages; the card's folders (stream/, rl/, …) arrive as streamrl.stream, streamrl.rl, … and the
installed package runs from outside the repository with its YAML data."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CARD = ("stream", "rewards", "rl", "checkpoints", "configs", "sim", "serving")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Build from a copy (links kept) so setuptools' build/ and egg-info never touch the checkout.
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in (*CARD, "streamrl"):
        shutil.copytree(ROOT / name, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run(
        [*pip, "-w", str(out), str(src)],
        check=True,
        capture_output=True,
    )
    (path,) = out.glob("streamrl-*.whl")
    return path


def test_only_streamrl_lands_in_site_packages(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top_level == {"streamrl"}
    for package in CARD:
        assert f"streamrl/{package}/__init__.py" in names, package
    assert "streamrl/configs/default.yaml" in names
    assert "streamrl/configs/world.yaml" in names
    for sample in ("README.md", "esci/esci_us_judgments.json", "otto/train_sample.jsonl"):
        assert f"streamrl/sim/data/{sample}" in names, sample  # the licensed samples, with attribution


def test_the_installed_package_runs_outside_the_repository(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)  # what pip install puts into site-packages
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import streamrl.configs as c, streamrl.rl.policy, streamrl.demo as d;"
        "cfg = c.load_config(None);"
        "print(c.__file__); print(d.WORLD.exists()); print(cfg.kafka.topics.rewards)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(target)], cwd=tmp_path, check=True, capture_output=True, text=True
    ).stdout.split()
    assert out[0].startswith(str(target)), out
    assert out[1:] == ["True", "streamrl.rewards"]
