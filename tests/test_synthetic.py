"""data/synthetic.py and data/gradnorm_toy.py: seeded, shaped, scaled as documented; data.only."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import compose_config

from mtlbench.data import build_data, gradnorm_toy, synthetic
from mtlbench.errors import ConfigError

SMALL = {"n_train": 256, "n_val": 32, "n_test": 48, "input_dim": 6, "teacher_dim": 5}
TASKS = {
    "cls_k2": {"kind": "classification", "num_classes": 2, "class_skew": 1.5},
    "cls_k10": {"kind": "classification", "num_classes": 10, "class_skew": 0.2},
    "reg_x1": {"kind": "regression", "dim": 1, "target_scale": 1.0},
    "reg_x100": {"kind": "regression", "dim": 3, "target_scale": 100.0, "loss_scale": 0.5,
                 "loss_shift": 2.0},
}


def build(seed=0, tasks=TASKS, **kwargs):
    return synthetic.build(seed=seed, tasks=tasks, **{**SMALL, **kwargs})


def tensors(data):
    for split in (data.train, data.val, data.test):
        yield split.inputs
        yield from split.targets.values()


def test_same_seed_same_data():
    a, b = build(seed=3), build(seed=3)
    assert all(torch.equal(x, y) for x, y in zip(tensors(a), tensors(b), strict=True))


def test_different_seeds_differ():
    a, b = build(seed=3), build(seed=4)
    assert not torch.equal(a.train.inputs, b.train.inputs)
    for name in TASKS:
        assert not torch.equal(a.train.targets[name], b.train.targets[name])


def shared_rows_equal(small, large) -> None:
    """``small``'s splits are prefixes of ``large``'s (inputs and every target ``small`` has)."""
    for a, b in ((small.train, large.train), (small.val, large.val), (small.test, large.test)):
        n = len(a)
        assert torch.equal(a.inputs, b.inputs[:n])
        for name, t in a.targets.items():
            assert torch.equal(t, b.targets[name][:n]), name


@pytest.mark.parametrize("sizes", [{"n_train": 100}, {"n_train": 1500, "n_test": 2000},
                                   {"n_val": 1}])
def test_other_split_sizes_keep_the_rows_they_share(sizes):
    """Each split's inputs and each task's noise are drawn in fixed blocks from their own
    streams, and the teacher and read-outs from theirs: a smaller split is a prefix of a larger
    one, whatever the other splits' sizes (version 1 drew everything from one stream: another
    n_train gave another teacher and other test rows)."""
    small = build(**{"n_train": 256, "n_val": 32, "n_test": 48, **sizes})
    large = build(n_train=2100, n_val=1100, n_test=2100)  # past a 1024-row block
    shared_rows_equal(small, large)


def test_removing_a_task_keeps_the_others_targets():
    fewer = build(tasks={k: v for k, v in TASKS.items() if k != "cls_k2"})
    reordered = build(tasks=dict(reversed(list(TASKS.items()))))
    shared_rows_equal(fewer, build())
    shared_rows_equal(reordered, build())


def test_each_part_has_its_own_stream():
    from mtlbench.data.base import rows, stream

    first = torch.randn(3, generator=stream(0, "teacher"))
    assert torch.equal(first, torch.randn(3, generator=stream(0, "teacher")))
    assert not torch.equal(first, torch.randn(3, generator=stream(0, "task", "teacher")))
    assert not torch.equal(first, torch.randn(3, generator=stream(1, "teacher")))
    assert rows(0, ("x",), 7, 2).shape == (1024, 2)  # whole blocks; the caller keeps 7
    assert torch.equal(rows(0, ("x",), 1025, 2)[:1024], rows(0, ("x",), 7, 2))
    assert rows(0, ("x",), 0, 2).shape == (0, 2)


def test_splits_too_large_for_memory_are_refused_before_generating(monkeypatch):
    """(``data.n_train=10000000000`` once generated blocks for hours before failing.)"""
    from mtlbench.data import base

    monkeypatch.setattr(base, "available_memory", lambda: 2**30)
    with pytest.raises(ConfigError, match=r"^The generated data would need ~5,364\.4 GiB "
                                          r"\(`data\.n_train = 10000000000`, `data\.n_val = 32`, "
                                          r"`data\.n_test = 48`; 144 values a row\) and 1\.0 GiB "
                                          r"of memory is available; lower data\.n_train"):
        build(n_train=10**10, input_dim=32, teacher_dim=16, tasks=dict(TASKS))
    with pytest.raises(ConfigError, match=r"^The generated data would need"):
        gradnorm_toy.build(seed=0, tasks={}, sigmas=[1.0], **{**TOY, "n_train": 10**9})
    assert len(build().train) == 256  # (what fits is built)


def test_only_the_current_generator_version_is_built():
    with pytest.raises(ConfigError, match=r"^`data\.version` must be 2 \(.*\)\. "
                                          r"Found `data\.version = 1`\.$"):
        build(version=1)
    with pytest.raises(ConfigError, match=r"`data\.version` must be 2"):
        gradnorm_toy.build(seed=0, tasks={}, sigmas=[1.0], version=1, **TOY)


def test_shapes_dtypes_and_specs():
    data = build()
    assert [t.name for t in data.tasks] == list(TASKS)
    assert [(t.kind, t.out_dim) for t in data.tasks] == [
        ("classification", 2), ("classification", 10), ("regression", 1), ("regression", 3)]
    spec = data.tasks[3]
    assert (spec.loss_scale, spec.loss_shift) == (0.5, 2.0)
    assert data.input_shape == (6,)
    for split, n in ((data.train, 256), (data.val, 32), (data.test, 48)):
        assert len(split) == n
        assert split.inputs.shape == (n, 6) and split.inputs.dtype == torch.float32
        assert split.targets["cls_k2"].shape == (n,)
        assert split.targets["cls_k2"].dtype == torch.int64
        assert split.targets["cls_k10"].shape == (n,)
        assert split.targets["reg_x1"].shape == (n, 1)
        assert split.targets["reg_x100"].shape == (n, 3)
        assert split.targets["reg_x100"].dtype == torch.float32
        assert int(split.targets["cls_k10"].min()) >= 0
        assert int(split.targets["cls_k10"].max()) < 10
        assert set(split.targets["cls_k2"].unique().tolist()) <= {0, 1}


def test_splits_are_disjoint_rows():
    data = build()
    rows = torch.cat([data.train.inputs, data.val.inputs, data.test.inputs])
    assert torch.unique(rows, dim=0).shape[0] == 256 + 32 + 48


def test_target_scale_multiplies_regression_targets_exactly():
    plain = {**TASKS, "reg_x100": {**TASKS["reg_x100"], "target_scale": 1.0}}
    a, b = build(tasks=TASKS), build(tasks=plain)
    # the generator draws do not depend on target_scale: the targets differ by exactly x100
    torch.testing.assert_close(a.train.targets["reg_x100"], 100.0 * b.train.targets["reg_x100"],
                               rtol=0, atol=0)
    assert torch.equal(a.train.targets["reg_x1"], b.train.targets["reg_x1"])


def test_default_config_has_regression_units_apart_by_100():
    cfg = compose_config(["data.n_train=1024", "data.n_val=8", "data.n_test=8"])
    data = build_data(cfg.data, seed=0)
    rms = {name: float(y.double().pow(2).mean().sqrt()) for name, y in data.train.targets.items()
           if y.dtype.is_floating_point}
    assert set(rms) == {"reg_x1", "reg_x100"}
    assert 20 < rms["reg_x100"] / rms["reg_x1"] < 500
    # so the derived initial losses (eq. 2) differ by orders of magnitude: the "different units"
    init = {t.name: t.derived_init_loss(data.train.targets[t.name]) for t in data.tasks}
    assert init["reg_x100"] / init["reg_x1"] > 100


def test_skewed_classes_make_prior_differ_from_init():
    data = build(n_train=2048)
    for task in data.tasks[:2]:
        y = data.train.targets[task.name]
        freq = torch.bincount(y, minlength=task.out_dim).double() / len(y)
        assert float(freq.max() - freq.min()) > 0.1  # clearly non-uniform
        prior, init = task.prior_loss(y), task.derived_init_loss(y)
        assert init == pytest.approx(math.log(task.out_dim), rel=1e-15)
        assert prior < init - 0.05


def test_class_skew_favours_class_zero():
    # same seed, so the same draws: a larger skew only lowers the logits of classes k > 0
    counts = []
    for skew in (0.0, 1.0, 3.0):
        tasks = {"c": {"kind": "classification", "num_classes": 4, "class_skew": skew}}
        y = build(tasks=tasks, n_train=1024).train.targets["c"]
        counts.append(int((y == 0).sum()))
    assert counts[0] < counts[1] < counts[2]


@pytest.mark.parametrize(("noise", "shared"), [(0.0, True), (0.1, False)])
def test_tasks_share_one_teacher(noise, shared):
    """Without noise every regression target is an affine map of the same teacher representation
    h [N, teacher_dim]: the centred targets of all tasks together (5 columns) have rank 3."""
    tasks = {"a": {"kind": "regression", "dim": 3, "target_scale": 10.0},
             "b": {"kind": "regression", "dim": 2}}
    data = build(tasks=tasks, teacher_dim=3, noise=noise)
    y = torch.cat([data.train.targets["a"], data.train.targets["b"]], dim=1).double()
    s = torch.linalg.svdvals(y - y.mean(dim=0))
    assert s[2] > 1e-2 * s[0]
    assert (s[3] < 1e-5 * s[0]) == shared


@pytest.mark.parametrize("key", ["n_train", "n_val", "n_test", "input_dim", "teacher_dim"])
def test_sizes_must_be_positive(key):
    with pytest.raises(ConfigError, match=rf"`data\.{key}` must be an integer >= 1\. "
                                          rf"Found `data\.{key} = 0`"):
        build(**{key: 0})


def test_no_tasks_and_missing_num_classes_are_errors():
    with pytest.raises(ConfigError, match=r"`data\.tasks` must define at least one task"):
        build(tasks={})
    with pytest.raises(ConfigError, match=r"`data\.tasks\.c\.num_classes` must be set"):
        build(tasks={"c": {"kind": "classification"}})


# ----------------------------------------------------------------------------- data.only
def test_only_keeps_one_task():
    data = build()
    one = data.select("reg_x1")
    assert [t.name for t in one.tasks] == ["reg_x1"]
    for full, kept in ((data.train, one.train), (data.val, one.val), (data.test, one.test)):
        assert list(kept.targets) == ["reg_x1"]
        assert torch.equal(kept.targets["reg_x1"], full.targets["reg_x1"])
        assert torch.equal(kept.inputs, full.inputs)
    assert data.select(None) is data


def test_only_through_build_data():
    cfg = compose_config(["data.n_train=64", "data.n_val=8", "data.n_test=8", "data.only=cls_k10"])
    data = build_data(cfg.data, seed=0)
    assert [t.name for t in data.tasks] == ["cls_k10"]
    assert list(data.train.targets) == ["cls_k10"]


def test_only_unknown_task_is_an_error():
    with pytest.raises(ConfigError, match=r"`data\.only` must name a task of this dataset "
                                          r"\(cls_k2, cls_k10, reg_x1, reg_x100\)\. "
                                          r"Found `data\.only = nope`") as info:
        build().select("nope")
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- gradnorm_toy
TOY = {"input_dim": 10, "output_dim": 4, "n_train": 64, "n_val": 8, "n_test": 8}


def test_gradnorm_toy_shapes_and_specs():
    data = gradnorm_toy.build(seed=0, tasks={"t1": {"loss_scale": 2.0}}, sigmas=[1.0, 100.0, 5.0],
                              **TOY)
    assert [t.name for t in data.tasks] == ["t0", "t1", "t2"]
    assert all(t.kind == "regression" and t.out_dim == 4 for t in data.tasks)
    assert data.tasks[1].loss_scale == 2.0 and data.tasks[0].loss_scale == 1.0
    assert data.train.inputs.shape == (64, 10)
    for name in ("t0", "t1", "t2"):
        assert data.train.targets[name].shape == (64, 4)
        assert data.test.targets[name].shape == (8, 4)


def test_gradnorm_toy_sigma_scales_targets():
    # f_i = σ_i tanh(...): |f_i| ≤ σ_i; the same seed with another σ gives exactly σ-scaled targets
    big = gradnorm_toy.build(seed=1, tasks={}, sigmas=[1.0, 100.0], **TOY)
    ones = gradnorm_toy.build(seed=1, tasks={}, sigmas=[1.0, 1.0], **TOY)
    assert float(big.train.targets["t0"].abs().max()) <= 1.0
    assert float(big.train.targets["t1"].abs().max()) <= 100.0
    assert float(big.train.targets["t1"].abs().max()) > 10.0
    torch.testing.assert_close(big.train.targets["t1"], 100.0 * ones.train.targets["t1"],
                               rtol=0, atol=0)
    assert torch.equal(big.train.targets["t0"], ones.train.targets["t0"])


def test_gradnorm_toy_other_sizes_and_sigmas_keep_what_they_share():
    small = gradnorm_toy.build(seed=2, tasks={}, sigmas=[1.0], **{**TOY, "n_train": 10})
    large = gradnorm_toy.build(seed=2, tasks={}, sigmas=[1.0, 3.0], **{**TOY, "n_test": 1500})
    shared_rows_equal(small, large)


def test_gradnorm_toy_is_seeded():
    a = gradnorm_toy.build(seed=2, tasks={}, sigmas=[1.0, 3.0], **TOY)
    b = gradnorm_toy.build(seed=2, tasks={}, sigmas=[1.0, 3.0], **TOY)
    c = gradnorm_toy.build(seed=3, tasks={}, sigmas=[1.0, 3.0], **TOY)
    assert all(torch.equal(x, y) for x, y in zip(tensors(a), tensors(b), strict=True))
    assert not torch.equal(a.train.targets["t0"], c.train.targets["t0"])


@pytest.mark.parametrize("key", ["n_train", "n_val", "n_test", "input_dim", "output_dim"])
def test_gradnorm_toy_sizes_must_be_positive(key):
    """(``data.n_train=-5`` once reached training and was reported as a divergence.)"""
    with pytest.raises(ConfigError, match=rf"`data\.{key}` must be an integer >= 1\. "
                                          rf"Found `data\.{key} = -5`"):
        gradnorm_toy.build(seed=0, tasks={}, sigmas=[1.0], **{**TOY, key: -5})


def test_gradnorm_toy_errors():
    with pytest.raises(ConfigError, match=r"`data\.tasks\.t5` is not a task of data=gradnorm_toy "
                                          r"with 2 sigmas \(tasks: t0, t1\)"):
        gradnorm_toy.build(seed=0, tasks={"t5": {}}, sigmas=[1.0, 2.0], **TOY)
    with pytest.raises(ConfigError, match=r"`data\.sigmas` must list at least one"):
        gradnorm_toy.build(seed=0, tasks={}, sigmas=[], **TOY)
