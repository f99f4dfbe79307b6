"""The configs ship inside the wheel: `mtlbench train` works from an installed wheel elsewhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import FAST, REPO


@pytest.mark.slow
def test_wheel_contains_every_config_and_trains_from_another_folder(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    str(REPO), "-w", str(wheels)], check=True, capture_output=True)
    (wheel,) = wheels.glob("mtlbench-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for yaml in (REPO / "conf").rglob("*.yaml"):
        assert f"mtlbench/conf/{yaml.relative_to(REPO / 'conf').as_posix()}" in names, yaml

    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(target), str(wheel)], check=True, capture_output=True)
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    probe = subprocess.run([sys.executable, "-c", "import mtlbench; print(mtlbench.__file__)"],
                           cwd=workdir, env=env, capture_output=True, text=True, check=True)
    assert probe.stdout.startswith(str(target)), "the wheel is not the copy being imported"
    result = subprocess.run([sys.executable, "-m", "mtlbench.cli", "train", *FAST,
                             "strategy=geometric", "hydra.run.dir=run"], cwd=workdir, env=env,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((workdir / "run" / "metrics.json").read_text())["strategy"] == "geometric"
