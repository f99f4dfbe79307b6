"""A resumed run is labelled by every process that trained it (mtlbench.segments), never by its
last one alone: the pure description, an old checkpoint's resume, and ``mtlbench report``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import compose_config, killed_at
from test_report import make_job, report_json, rows_by_label

from mtlbench import checkpoint, segments
from mtlbench.train import run

CPU1 = {"device": "cpu", "num_threads": 1, "optimizer_implementation": "default",
        "gradient_engine": None}
RUN = ["trainer.max_steps=6", "trainer.eval_every=3", "trainer.batch_size=32", "data.n_train=256",
       "data.n_val=64", "data.n_test=64", "trainer.device=cpu", "trainer.checkpoint_every=3"]


def test_a_segment_records_its_steps_seconds_and_every_described_key() -> None:
    assert segments.segment(3, 10, 1.23456, {**CPU1, "other": 1}) == {
        "steps": [3, 10], "seconds": 1.235, **CPU1}
    assert segments.unrecorded(5, 2.0) == {
        "steps": [0, 5], "seconds": 2.0, **dict.fromkeys(segments.DESCRIBED_KEYS)}


@pytest.mark.parametrize("key,other", [("device", "cuda:0"), ("num_threads", 2),
                                       ("optimizer_implementation", "fused"),
                                       ("gradient_engine", {"traversal": "loop"})])
def test_described_is_the_common_value_and_null_where_trained_segments_differ(
        key: str, other: Any) -> None:
    one = [segments.segment(0, 4, 1.0, CPU1)]
    two = [*one, segments.segment(4, 9, 1.0, {**CPU1, key: other})]
    assert segments.described(one) == CPU1
    assert segments.described(two) == {**CPU1, key: None}
    assert segments.described(two[::-1]) == {**CPU1, key: None}  # in either order
    assert segments.uniform({"segments": one}) and not segments.uniform({"segments": two})


def test_a_segment_that_trained_no_step_does_not_relabel_the_run() -> None:
    # a run killed after its last checkpoint, resumed elsewhere: the resume only tests the model
    ran = [segments.segment(0, 6, 1.0, CPU1),
           segments.segment(6, 6, 0.1, {**CPU1, "num_threads": 2})]
    assert segments.described(ran) == CPU1 and segments.uniform({"segments": ran})
    only = [segments.segment(6, 6, 0.1, CPU1)]
    assert segments.described(only) == CPU1


def test_steps_of_unknown_settings_are_not_labelled_by_a_later_segment() -> None:
    ran = [segments.unrecorded(3, 1.0), segments.segment(3, 6, 1.0, CPU1)]
    assert segments.described(ran) == dict.fromkeys(segments.DESCRIBED_KEYS)
    assert not segments.uniform({"segments": ran})


@pytest.mark.parametrize("bad", [[], [{"steps": 3}], [{"no": "steps"}], "cpu", [None]])
def test_malformed_segments_are_not_taken_for_uniform(bad: Any) -> None:
    assert not segments.uniform({"segments": bad})
    assert segments.uniform({})  # written before segments were recorded


def test_a_resume_steps_with_the_optimizer_implementation_it_is_labelled_with(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``optimizer.fused=true`` on a resume of a default-implementation checkpoint: the resumed
    steps run torch's fused Adam (its state dict would bring back the checkpoint's choice)."""
    import importlib

    adam = importlib.import_module("torch.optim.adam")  # (torch.optim.adam is a function)
    killed_at(RUN, "equal", tmp_path, at_step=3)
    fused, calls = adam._fused_adam, []

    def counted(*args: Any, **kwargs: Any) -> None:
        calls.append(1)
        fused(*args, **kwargs)
    monkeypatch.setattr(adam, "_fused_adam", counted)
    metrics = run(compose_config([*RUN, "optimizer.fused=true"]), tmp_path, "equal")
    assert len(calls) == 3  # steps 3, 4, 5
    assert [s["optimizer_implementation"] for s in metrics["segments"]] == ["default", "fused"]


def test_a_resume_logs_the_checkpoints_validation_again(tmp_path: Path) -> None:
    """The resume purges TensorBoard's events from its step on, where the validation before the
    checkpoint was logged: it is logged again, so the curve has every point."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def val_steps(run_dir: Path) -> list[int]:
        events = EventAccumulator(str(run_dir))
        events.Reload()
        return [e.step for e in events.Scalars("val/accuracy/cls_k2")]
    whole = tmp_path / "whole"
    run(compose_config(RUN), whole, "equal")
    killed_at(RUN, "equal", tmp_path / "resumed", at_step=3)
    run(compose_config(RUN), tmp_path / "resumed", "equal")
    assert val_steps(tmp_path / "resumed") == val_steps(whole) == [3, 6]


def test_a_resume_with_other_threads_and_optimizer_is_labelled_by_both(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    try:
        killed_at([*RUN, "trainer.num_threads=1"], "equal", tmp_path, at_step=3)
        metrics = run(compose_config([*RUN, "trainer.num_threads=2", "optimizer.fused=true"]),
                      tmp_path, "equal")
    finally:
        torch.set_num_threads(threads)
    ran = metrics["segments"]
    assert [s["steps"] for s in ran] == [[0, 3], [3, 6]]
    assert [(s["num_threads"], s["optimizer_implementation"]) for s in ran] == [
        (1, "default"), (2, "fused")]
    assert (metrics["device"], metrics["num_threads"], metrics["optimizer_implementation"]) == (
        "cpu", None, None)
    assert metrics["train_seconds"] == pytest.approx(sum(s["seconds"] for s in ran), abs=0.01)
    assert json.loads((tmp_path / "metrics.json").read_text())["segments"] == ran


def test_an_uninterrupted_run_is_one_segment_and_labelled_by_it(tmp_path: Path) -> None:
    metrics = run(compose_config([*RUN, "trainer.num_threads=1"]), tmp_path, "equal")
    assert metrics["segments"] == [segments.segment(0, 6, metrics["train_seconds"], CPU1)]
    assert {key: metrics[key] for key in segments.DESCRIBED_KEYS} == CPU1


def test_a_checkpoint_without_segments_resumes_with_its_steps_unlabelled(tmp_path: Path) -> None:
    killed_at([*RUN, "trainer.num_threads=1"], "equal", tmp_path, at_step=3)
    _, path = checkpoint.list_checkpoints(tmp_path)[-1]
    state = checkpoint.load(path)
    state["counters"] = {"skipped_steps": 0, "train_seconds": 0.5}  # as written before segments
    torch.save(state, path)
    metrics = run(compose_config([*RUN, "trainer.num_threads=1"]), tmp_path, "equal")
    assert metrics["segments"][0] == segments.unrecorded(3, 0.5)
    assert metrics["segments"][1]["steps"] == [3, 6]
    assert metrics["num_threads"] is None and metrics["device"] is None


def test_report_gives_no_time_per_step_for_a_run_timed_in_two_settings(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fast = [segments.segment(0, 3, 0.3, CPU1), segments.segment(3, 6, 0.3, CPU1)]
    mixed = [segments.segment(0, 3, 0.3, CPU1),
             segments.segment(3, 6, 3.0, {**CPU1, "num_threads": 2})]
    make_job(tmp_path, "0_strategy=equal,seed=0", "equal", 0, {"cls": 0.8},
             extra={"train_seconds": 0.6, "segments": fast})
    make_job(tmp_path, "1_strategy=equal,seed=1", "equal", 1, {"cls": 0.8},
             extra={"train_seconds": 3.3, "segments": mixed})
    make_job(tmp_path, "2_strategy=realtime,seed=0", "realtime", 0, {"cls": 0.8},
             extra={"train_seconds": 3.3, "segments": mixed})
    rows = rows_by_label(report_json(capsys, str(tmp_path)))
    assert rows["equal"]["seconds_per_step"] == pytest.approx(0.1)  # seed 0's alone
    assert rows["realtime"]["seconds_per_step"] is None
