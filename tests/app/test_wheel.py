"""The wheel works on its own: built from the checkout, installed into a fresh virtual environment, ``ard-train``
runs from an empty folder with the Hydra configs shipped inside the wheel (``lightning_ard.conf``).

The fresh environment sees the already-installed dependencies (torch, lightning, hydra, ...) through a ``.pth`` file
holding the path of this interpreter's site-packages. A path line in a ``.pth`` adds the folder to ``sys.path`` but
does not run the ``.pth`` files inside it, so the editable install of the checkout stays inactive there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

FASHION = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz")
SOURCES = ("pyproject.toml", "README.md", "lightning_ard", "conf")
"""What the build reads (the checkout's build/ and egg-info folders are left out: they may be stale)."""

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not all((FASHION / name).is_file() for name in FASHION_FILES),
        reason=f"needs Fashion-MNIST in {FASHION}: `apt-get install dataset-fashion-mnist`",
    ),
]


def _run(cmd: list[str | Path], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _clean_env() -> dict[str, str]:
    """The environment without anything that would point Python at the checkout or this virtual environment."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _build_wheel(tmp: Path, env: dict[str, str]) -> Path:
    """A wheel of the checkout's sources, built in a copy (an in-tree build would write build/ into the checkout)."""
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, src / name)
    dist = tmp / "dist"
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", dist, src]
    _run(cmd, tmp, env, timeout=120)
    (wheel,) = dist.glob("lightning_ard-*.whl")
    return wheel


def _fresh_venv(tmp: Path, env: dict[str, str]) -> tuple[Path, Path]:
    """A virtual environment without pip whose site-packages also sees this interpreter's site-packages."""
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], tmp, env, timeout=60)
    python = venv / "bin" / "python"
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(_run([python, "-c", purelib], tmp, env, timeout=30).stdout.strip())
    assert site.is_relative_to(venv), site
    (site / "_outer_site_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python, site


def test_wheel_installs_and_ard_train_runs_from_an_empty_folder(tmp_path: Path) -> None:
    """The wheel ships every config yaml; installed (no deps) into a fresh venv, ``ard-train
    trainer.fast_dev_run=true`` exits 0 from an empty folder, imports lightning_ard from that venv (not the checkout)
    and writes a Hydra run folder with ``.hydra/config.yaml`` under the folder."""
    env = _clean_env()
    wheel = _build_wheel(tmp_path, env)

    shipped = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        f"lightning_ard/conf/{p.relative_to(ROOT / 'conf').as_posix()}" for p in (ROOT / "conf").rglob("*.yaml")
    }
    assert "lightning_ard/conf/config.yaml" in expected
    assert not expected - shipped, f"config files missing from the wheel: {sorted(expected - shipped)}"
    assert "lightning_ard/app/train.py" in shipped and "lightning_ard/kernels/triton/backend.py" in shipped

    python, site = _fresh_venv(tmp_path, env)
    install = [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", wheel]
    _run(install, tmp_path, env, timeout=120)

    empty = tmp_path / "empty"
    empty.mkdir()
    probe = (
        "import json, lightning_ard, lightning_ard.conf, lightning_ard.app.train\n"
        "from importlib.resources import files\n"
        "print(json.dumps({'file': lightning_ard.__file__, 'conf': str(files('lightning_ard.conf') / 'config.yaml'),"
        " 'editable': [m for m in __import__('sys').modules if 'editable' in m]}))"
    )
    where = json.loads(_run([python, "-c", probe], empty, env, timeout=120).stdout.strip().splitlines()[-1])
    assert Path(where["file"]).is_relative_to(site), f"lightning_ard imported from {where['file']}, not {site}"
    assert Path(where["conf"]).is_file() and Path(where["conf"]).is_relative_to(site), where["conf"]
    assert not where["editable"], f"the checkout's editable finder is active: {where['editable']}"
    assert not list(empty.iterdir()), "importing the package wrote into the working folder"

    ard_train = python.parent / "ard-train"
    assert ard_train.is_file()
    assert ard_train.read_text().splitlines()[0] == f"#!{python}", "ard-train does not run the fresh venv's python"
    proc = _run([ard_train, "trainer.fast_dev_run=true"], empty, env, timeout=150)

    configs = list(empty.glob("outputs/*/*/.hydra/config.yaml"))
    assert len(configs) == 1, f"no Hydra run folder under {empty}: {sorted(p.name for p in empty.rglob('*'))[:20]}"
    assert "fast_dev_run: true" in configs[0].read_text()
    assert str(ROOT / "lightning_ard") not in proc.stdout + proc.stderr, "the run used the checkout's sources"
