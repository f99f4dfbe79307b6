"""The benchmark scripts still run, and bench_peers' agreement checks hold (tiny settings; slow).

Speed itself is never asserted here (``scripts/`` prints it); what is asserted is that every
script runs to the end on the current code, and that bench_peers' rows compute the same update
as their peers before it times them (its ``checked:`` lines are assertions inside the script)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
pytestmark = pytest.mark.slow


def run_script(name: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(SCRIPTS / name), *args], capture_output=True,
                          text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


def test_bench_peers_rows_agree_and_every_row_is_timed() -> None:
    out = run_script("bench_peers.py", "--model", "mlp128", "--tasks", "3", "--width", "16",
                     "--input-dim", "8", "--batch", "16", "--rounds", "1", "--steps", "1",
                     "--warmup", "0", "--memory")
    checked = [line for line in out.splitlines() if line.startswith("checked:")]
    assert len(checked) == 13, checked  # every agreement of the module doc, each asserted
    assert "heads=unweighted, heads (grad L_i) (||a-b||/||b|| = 0.0e+00)" in out  # exact
    assert any(line.startswith("checked: torchjd UPGrad tuned == torchjd UPGrad, every .grad")
               for line in checked)
    summary = out[out.index("## median ratio"):]
    for row in ("mtlbench gradnorm_ideal[shared]", "heads=unweighted", "by hand",
                "torchjd mtl_backward + UPGrad", "tuned: chunk=1, params, optimize_gramian",
                "LibMTL-style DB-MTL"):
        assert row in summary, row
    paired = out[out.index("## paired"):out.index("## peak MiB per step")]
    assert "| mtlbench upgrad | tuned: chunk=1, params, optimize_gramian | " in paired
    assert paired.count("\n| mtlbench ") == 1 + 7  # the header and every pair


def test_bench_strategies_times_every_strategy_or_the_chosen_ones() -> None:
    common = ["--tasks", "2", "--width", "16", "--batch", "8", "--rounds", "1", "--steps", "1"]
    every = run_script("bench_strategies.py", *common)
    chosen = run_script("bench_strategies.py", *common, "--strategies", "gradnorm_ideal")
    rows = {line.split("|")[1].strip() for line in chosen.splitlines()
            if line.startswith("| ") and "strategy" not in line}
    assert rows == {"equal", "gradnorm_ideal", "gradnorm_ideal[last_shared]",
                    "gradnorm_ideal[representation]"}
    strategies = {p.stem for p in (SCRIPTS.parent / "conf" / "strategy").glob("*.yaml")}
    timed = {line.split("|")[1].strip() for line in every.splitlines()
             if line.startswith("| ") and "strategy" not in line}
    assert strategies - timed == {"single_task"}  # (it needs strategy.task: refused)


def test_bench_step_tax_runs() -> None:
    out = run_script("bench_step_tax.py", "--width", "16", "--input-dim", "8", "--batch", "16",
                     "--rounds", "2", "--steps", "2")
    assert out.strip()


def test_bench_peers_fused_adam_reaches_every_row() -> None:
    """``--fused-adam``: the header says so, the rows still agree, and an mtlbench row's Adam
    (rebuilt from ``prepare``'s groups) is fused in every group, at the same learning rate."""
    out = run_script("bench_peers.py", "--model", "mlp128", "--tasks", "2", "--width", "16",
                     "--input-dim", "8", "--batch", "16", "--rounds", "1", "--steps", "1",
                     "--warmup", "0", "--fused-adam", "--cases", "gradnorm_ideal[shared]",
                     "by hand")
    assert "(fused implementation, every row)" in out
    assert len([line for line in out.splitlines() if line.startswith("checked:")]) == 13
    sys.path.insert(0, str(SCRIPTS))
    try:
        import bench_peers
        import torch
    finally:
        sys.path.remove(str(SCRIPTS))
    params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))]
    plain = torch.optim.Adam([{"params": params[:1]}, {"params": params[1:], "lr": 0.5}], lr=1e-4)
    assert bench_peers.with_adam_options(plain) is plain  # no options: left as it is
    bench_peers.ADAM_OPTIONS.update(fused=True)
    try:
        fused = bench_peers.with_adam_options(plain)
    finally:
        bench_peers.ADAM_OPTIONS.clear()
    assert [g["fused"] for g in fused.param_groups] == [True, True]
    assert [g["lr"] for g in fused.param_groups] == [1e-4, 0.5]
    assert [g["params"] for g in fused.param_groups] == [params[:1], params[1:]]


def assert_extra_row(option: str, cases: list[str], check: str, rows: list[str]) -> None:
    """``bench_peers.py <option>`` on a tiny MLP, timing the rows matching ``cases``: its 14
    agreement checks passed, one of them starting with ``check``, and the summary has ``rows``."""
    out = run_script("bench_peers.py", "--model", "mlp128", "--tasks", "2", "--width", "16",
                     "--input-dim", "8", "--batch", "16", "--rounds", "1", "--steps", "1",
                     "--warmup", "1", option, "--cases", *cases)
    checked = [line for line in out.splitlines() if line.startswith("checked:")]
    assert len(checked) == 14, checked
    assert any(line.startswith(f"checked: {check}") for line in checked), checked
    timed = [line.split("|")[1].strip() for line in out[out.index("## median ratio"):].splitlines()
             if line.startswith("| ") and not line.startswith("| case")]
    assert timed == ["floor: sum backward + Adam", *rows]


@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None,
                    reason="torch.compile's CPU backend builds with $CXX (default g++)")
def test_bench_peers_compile_adds_the_compiled_by_hand_row_and_checks_it() -> None:
    """``--compile``: the by-hand loop on ``torch.compile(model)`` is timed right under the
    by-hand row, after its update was checked against it on every parameter."""
    assert_extra_row("--compile", ["by hand"],
                     "by-hand normalize, torch.compile(model) == by-hand",
                     ["by hand: n x autograd.grad + normalize", "by hand, torch.compile(model)"])


@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "c++")) is None or shutil.which("ninja")
                    is None, reason="torch.utils.cpp_extension builds with $CXX and ninja")
def test_bench_peers_native_adds_the_c_plus_plus_step_and_checks_it() -> None:
    """``--native``: ``scripts/native_loop.cpp``'s step is timed right under mtlbench's
    gradnorm_ideal[shared] row, after its update was checked against it on every parameter."""
    assert_extra_row("--native", ["gradnorm_ideal[shared]", "C++"],
                     "the same step in C++ == mtlbench gradnorm_ideal[shared]",
                     ["mtlbench gradnorm_ideal[shared]", "the same step in C++ (not mtlbench)"])
