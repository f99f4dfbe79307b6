"""mtlbench.threads: the OpenMP wait policy set before torch loads; the thread count in effect."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import FAST

from mtlbench import threads
from mtlbench.threads import apply_num_threads, prepare_process_env

REPO = Path(__file__).resolve().parents[1]
ALL_VARIABLES = (*threads.WAIT_VARIABLES, *threads.COUNT_VARIABLES)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ALL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def run_python(code: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -c code args`` in the repo, without any OpenMP variable of ours, plus ``env``."""
    base = {k: v for k, v in os.environ.items() if k not in ALL_VARIABLES}
    return subprocess.run([sys.executable, "-c", code, *args], env={**base, **env}, cwd=REPO,
                          capture_output=True, text=True, timeout=300, check=True)


def displayed_spincount(stderr: str) -> str:
    """libgomp's spin count as printed by ``OMP_DISPLAY_ENV=VERBOSE`` (its display shows
    OMP_WAIT_POLICY as PASSIVE whether set or not; the spin count tells them apart)."""
    shown = re.search(r"GOMP_SPINCOUNT\s*=\s*'(\d+)'", stderr)
    if shown is None:
        pytest.skip("this torch's OpenMP runtime is not libgomp (no GOMP_SPINCOUNT displayed)")
    return shown.group(1)


def test_openmp_runtime_stops_spinning_when_prepared_before_torch_loads() -> None:
    """In a fresh process with no OpenMP variables: prepare_process_env does not import torch,
    and the OpenMP runtime torch loads afterwards spins 0 times (PASSIVE) instead of 300,000."""
    code = ("import sys\nfrom mtlbench.threads import prepare_process_env\n"
            "prepare_process_env()\nprint('torch imported:', 'torch' in sys.modules)\n"
            "import os, torch\nprint('env:', os.environ.get('OMP_WAIT_POLICY'))\n")
    res = run_python(code, OMP_DISPLAY_ENV="VERBOSE")
    assert "torch imported: False" in res.stdout
    assert "env: PASSIVE" in res.stdout
    assert displayed_spincount(res.stderr) == "0"
    # the control: without prepare_process_env the runtime spins
    assert displayed_spincount(run_python("import torch", OMP_DISPLAY_ENV="VERBOSE").stderr) != "0"


def test_prepare_sets_passive_when_nothing_is_set(clean_env: pytest.MonkeyPatch) -> None:
    prepare_process_env()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"


@pytest.mark.parametrize("name, value", [("OMP_WAIT_POLICY", "ACTIVE"),
                                         ("OMP_WAIT_POLICY", "passive"),
                                         ("GOMP_SPINCOUNT", "10000"),
                                         ("KMP_BLOCKTIME", "0")])
def test_prepare_respects_a_wait_setting_of_the_user(clean_env: pytest.MonkeyPatch, name: str,
                                                     value: str) -> None:
    clean_env.setenv(name, value)
    prepare_process_env()
    assert os.environ[name] == value
    if name != "OMP_WAIT_POLICY":  # GOMP_SPINCOUNT would lose to a PASSIVE we added
        assert "OMP_WAIT_POLICY" not in os.environ


@pytest.mark.usefixtures("restore_threads")
@pytest.mark.parametrize("n", [1, 2, 3])
def test_explicit_count_is_applied_and_returned(clean_env: pytest.MonkeyPatch, n: int) -> None:
    assert apply_num_threads(n) == n
    assert torch.get_num_threads() == n


@pytest.mark.usefixtures("restore_threads")
def test_automatic_is_one_thread_whatever_the_cores(clean_env: pytest.MonkeyPatch) -> None:
    torch.set_num_threads(2)  # torch's own default on a 2-core machine
    clean_env.setattr(os, "cpu_count", lambda: 64)
    assert apply_num_threads(0) == 1
    assert torch.get_num_threads() == 1


@pytest.mark.usefixtures("restore_threads")
@pytest.mark.parametrize("name", threads.COUNT_VARIABLES)
def test_automatic_keeps_a_count_stated_in_the_environment(clean_env: pytest.MonkeyPatch,
                                                           name: str) -> None:
    clean_env.setenv(name, "3")
    torch.set_num_threads(3)  # what torch adopted from the variable at import
    assert apply_num_threads(0) == 3
    assert torch.get_num_threads() == 3


def test_automatic_reads_a_count_that_torch_adopted_at_import() -> None:
    """End to end in a fresh process: OMP_NUM_THREADS=2 → torch starts with 2 → auto keeps 2;
    without it, auto gives 1."""
    code = "from mtlbench.threads import apply_num_threads\nprint(apply_num_threads(0))"
    assert run_python(code, OMP_NUM_THREADS="2").stdout.strip() == "2"
    assert run_python(code).stdout.strip() == "1"


def test_negative_count_is_refused() -> None:
    with pytest.raises(ValueError, match="num_threads"):
        apply_num_threads(-1)


def test_mtlbench_train_runs_one_passive_thread_and_says_so(tmp_path: Path) -> None:
    """The CLI end to end, no OpenMP variables set: the OpenMP runtime comes up with PASSIVE (the
    CLI prepared the environment before torch loaded) and metrics.json states 1 thread."""
    res = run_python("from mtlbench.cli import main\nraise SystemExit(main())", "train", *FAST,
                     f"hydra.run.dir={tmp_path / 'run'}", OMP_DISPLAY_ENV="VERBOSE")
    assert displayed_spincount(res.stderr) == "0"
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["num_threads"] == 1
