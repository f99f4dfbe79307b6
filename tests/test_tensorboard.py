"""TensorBoard really shows a sweep: every job is a run and an HParams session (γ = ±inf included).

Starts ``tensorboard`` on 127.0.0.1 (a free port) over a 2-job multirun and queries its HTTP API.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import FAST, run_cli

pytestmark = pytest.mark.slow

STATUSES = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(url: str, body: dict[str, Any] | None = None) -> Any:
    """GET (or POST ``body`` as JSON) and decode the JSON answer."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tb")
    for part, args in (("gm", ["strategy=generalized_mean", "strategy.gamma=-inf,1"]),
                       ("eq", ["strategy=equal"])):
        proc = run_cli(["train", "-m", *args, *FAST, f"hydra.sweep.dir={root / 'sweep' / part}"],
                       cwd=root)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return root / "sweep"


@pytest.fixture(scope="module")
def tensorboard(sweep: Path) -> Iterator[str]:
    port = free_port()
    log_path = sweep.parent / "tensorboard.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(sweep),
                                 "--host", "127.0.0.1", "--port", str(port), "--load_fast=false"],
                                stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_for_runs(base, proc, 3, log_path)
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_for_runs(base: str, proc: subprocess.Popen[bytes], count: int, log_path: Path) -> None:
    """Poll ``/data/runs`` until TensorBoard lists ``count`` runs (60 s at most)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            if len(get(f"{base}/data/runs")) == count:
                return
        except OSError:
            pass
        assert proc.poll() is None, log_path.read_text()
        assert time.monotonic() < deadline, f"TensorBoard did not list {count} runs within 60 s"
        time.sleep(0.5)


def job_dirs(sweep: Path) -> list[str]:
    """Job dirs relative to the logdir, as TensorBoard names runs."""
    return sorted(str(p.parent.relative_to(sweep)) for p in sweep.glob("*/*/.hydra"))


def test_every_job_is_a_run(sweep: Path, tensorboard: str) -> None:
    assert sorted(get(f"{tensorboard}/data/runs")) == job_dirs(sweep)


def test_every_job_is_an_hparams_session_gamma_numeric(sweep: Path, tensorboard: str) -> None:
    experiment = get(f"{tensorboard}/data/plugin/hparams/experiment", {"experimentName": ""})
    infos = {h["name"]: h["type"] for h in experiment["hparamInfos"]}
    assert infos["strategy.gamma"] == "DATA_TYPE_FLOAT64"
    assert infos["strategy"] == "DATA_TYPE_STRING"
    metrics = {m["name"]["tag"] for m in experiment["metricInfos"]}
    assert {"hparams/test_accuracy/cls_k10", "hparams/test_mse/reg_x1"} <= metrics

    # a numeric filter over the whole real line, as the HParams table applies one: no row may drop
    body = {"experimentName": "", "allowedStatuses": STATUSES, "startIndex": 0, "sliceSize": 100,
            "colParams": [{"hparam": "strategy.gamma",
                           "filterInterval": {"minValue": "-Infinity", "maxValue": "Infinity"}},
                          {"metric": {"tag": "hparams/test_accuracy/cls_k10"}}]}
    groups = get(f"{tensorboard}/data/plugin/hparams/session_groups", body)["sessionGroups"]
    assert sorted(g["name"] for g in groups) == job_dirs(sweep)
    gammas = {g["name"]: g["hparams"].get("strategy.gamma") for g in groups}
    assert sorted(gammas.values(), key=str) == [-sys.float_info.max, 1.0, None], gammas
    strategies = sorted(g["hparams"]["strategy"] for g in groups)
    assert strategies == ["equal", "generalized_mean", "generalized_mean"]
    for group in groups:
        (value,) = [m["value"] for m in group["metricValues"]
                    if m["name"]["tag"] == "hparams/test_accuracy/cls_k10"]
        metrics_json = json.loads((sweep / group["name"] / "metrics.json").read_text())
        assert value == pytest.approx(metrics_json["tasks"]["cls_k10"]["accuracy"])
