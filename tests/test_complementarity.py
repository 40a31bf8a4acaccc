"""Complementarity: hand-computed flips, entropies, top-p counts and forecasts; file checks; the
vectorised all-pairs table against the per-pair reference on random data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import h5py
import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kt.artifacts import FORMAT_VERSION
from kt.complementarity import (
    COLUMNS,
    complementarity,
    flip_stats,
    load_predictions,
    naive_pair,
    pair_table,
    pairwise_greater,
    write_complementarity,
)
from kt.errors import KtError


def correctness_matrix(files):
    """(names, correct, labels, accuracies) of eval logits files, through the step's own loader."""
    p = load_predictions(files)
    return p.names, p.correct, p.labels, p.accuracies

# Hand-made case: 10 samples, 3 classes, 4 models (D predicts exactly like A).
LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
CORRECT = {
    #     class 0     class 1  class 2
    "A": [1, 1, 1, 0, 1, 1, 0, 1, 1, 0],  # 70 %
    "B": [0, 0, 1, 1, 0, 1, 1, 0, 1, 1],  # 60 %
    "C": [1, 1, 1, 1, 1, 1, 1, 1, 0, 1],  # 90 %
    "D": [1, 1, 1, 0, 1, 1, 0, 1, 1, 0],  # 70 %, = A
}
NAMES = list(CORRECT)
# Positive flips per class, worked out by hand (teacher right, student wrong):
#   A over B: samples 0, 1 (class 0), 4 (class 1), 7 (class 2) -> [2, 1, 1]
#   B over A: samples 3 (0), 6 (1), 9 (2)                       -> [1, 1, 1]
#   A over C: sample 8 (2)                                       -> [0, 0, 1]
#   C over A: samples 3, 6, 9                                    -> [1, 1, 1]
#   B over C: sample 8                                           -> [0, 0, 1]
#   C over B: samples 0, 1, 4, 7                                 -> [2, 1, 1]
#   A over D, D over A: none                                     -> [0, 0, 0]
PER_CLASS = {
    ("A", "B"): [2, 1, 1], ("B", "A"): [1, 1, 1], ("A", "C"): [0, 0, 1], ("C", "A"): [1, 1, 1],
    ("B", "C"): [0, 0, 1], ("C", "B"): [2, 1, 1], ("A", "D"): [0, 0, 0], ("D", "A"): [0, 0, 0],
    ("D", "B"): [2, 1, 1], ("B", "D"): [1, 1, 1], ("D", "C"): [0, 0, 1], ("C", "D"): [1, 1, 1],
}
H_211 = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))  # = 1.5 ln 2
H_111 = math.log(3)
# top-p: counts sorted descending, smallest k with cumsum >= p/100 * total.
#   [2,1,1] (total 4): p = 50 needs 2 -> k = 1 (2 >= 2, boundary counts); p = 2, 5, 20 -> k = 1.
#   [1,1,1] (total 3): p = 50 needs 1.5 -> k = 2; p = 20 needs 0.6 -> k = 1; p = 2, 5 -> k = 1.
#   [0,0,1] (total 1): k = 1 for every p, entropy 0.   [0,0,0]: everything 0.
EXPECTED = {
    (2, 1, 1): {"pos_flip_count": 4, "pos_flip_entropy": H_211, "top2": 1, "top5": 1, "top20": 1, "top50": 1},
    (1, 1, 1): {"pos_flip_count": 3, "pos_flip_entropy": H_111, "top2": 1, "top5": 1, "top20": 1, "top50": 2},
    (0, 0, 1): {"pos_flip_count": 1, "pos_flip_entropy": 0.0, "top2": 1, "top5": 1, "top20": 1, "top50": 1},
    (0, 0, 0): {"pos_flip_count": 0, "pos_flip_entropy": 0.0, "top2": 0, "top5": 0, "top20": 0, "top50": 0},
}
ACC = {"A": 70.0, "B": 60.0, "C": 90.0, "D": 70.0}


def correct_matrix() -> np.ndarray:
    return np.array([CORRECT[n] for n in NAMES], dtype=bool)


def logits_for(correct: list[int], labels: np.ndarray, confidence: float = 2.0) -> np.ndarray:
    """(N, 3) logits predicting the label where ``correct`` and the next class otherwise."""
    z = np.zeros((len(labels), 3), dtype=np.float32)
    for i, (ok, y) in enumerate(zip(correct, labels, strict=True)):
        z[i, y if ok else (y + 1) % 3] = confidence
    return z


def write_logits(path: Path, logits: np.ndarray, labels: np.ndarray, index: np.ndarray | None = None,
                 fingerprint: str | None = "fp-1", model: str | None = None) -> Path:
    """A logits file with the layout of kt.artifacts (datasets logits/labels/index)."""
    with h5py.File(path, "w") as f:
        f.create_dataset("logits", data=np.asarray(logits, dtype=np.float32))
        f.create_dataset("labels", data=np.asarray(labels, dtype=np.int64))
        idx = np.arange(len(labels)) if index is None else index
        f.create_dataset("index", data=np.asarray(idx).astype(h5py.string_dtype()) if np.asarray(idx).dtype.kind
                         in "US" else np.asarray(idx, dtype=np.int64))
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["num_classes"] = logits.shape[1]
        if fingerprint is not None:
            f.attrs["dataset_fingerprint"] = fingerprint
        if model is not None:
            f.attrs["model"] = model
    return path


@pytest.fixture
def hand_files(tmp_path: Path) -> list[Path]:
    return [write_logits(tmp_path / f"{n}.h5", logits_for(CORRECT[n], LABELS), LABELS, model=n) for n in NAMES]


# ------------------------------------------------------------------------------------ hand-made


def test_hand_made_flips_entropy_top_p() -> None:
    table = pair_table(correct_matrix(), LABELS, 3, NAMES)
    assert table.columns == COLUMNS
    assert table.height == 12  # 4 * 3 ordered pairs, no self-pairs
    assert table.filter(pl.col("teacher") == pl.col("student")).height == 0
    for row in table.iter_rows(named=True):
        t, s = row["teacher"], row["student"]
        counts = tuple(PER_CLASS[(t, s)])
        want = EXPECTED[counts]
        for key, value in want.items():
            if key == "pos_flip_entropy":
                assert row[key] == pytest.approx(value, rel=1e-12, abs=1e-15), (t, s, key)
            else:
                assert row[key] == value, (t, s, key)
        assert row["pos_flips"] == pytest.approx(10.0 * sum(counts))  # % of 10 samples
        assert row["neg_flips"] == pytest.approx(10.0 * sum(PER_CLASS[(s, t)]))
        assert row["teacher_acc"] == pytest.approx(ACC[t])
        assert row["student_acc"] == pytest.approx(ACC[s])
        assert row["acc_diff"] == pytest.approx(ACC[t] - ACC[s])
        assert row["forecast_dp"] is None and row["forecast_dp_unsup"] is None
    # the worked entropy, in a closed form independent of H_211's formula: flips [2, 1, 1] of A over B
    a_over_b = table.filter((pl.col("teacher") == "A") & (pl.col("student") == "B"))
    assert a_over_b["pos_flip_entropy"].item() == pytest.approx(1.5 * math.log(2), rel=1e-12)


def test_hand_made_per_class_counts_in_hdf5(tmp_path: Path) -> None:
    table = write_complementarity(tmp_path / "pairs.parquet", tmp_path / "per_class.h5", correct_matrix(),
                                  LABELS, 3, NAMES, classes=["x", "y", "z"])
    assert pl.read_parquet(tmp_path / "pairs.parquet").equals(table)
    with h5py.File(tmp_path / "per_class.h5") as f:
        counts = f["pos_flips_per_class"][:]
        assert counts.dtype == np.int64 and counts.shape == (4, 4, 3)
        assert f.attrs["scope"] == "all pairs"
        assert json.loads(f.attrs["models"]) == NAMES
        assert json.loads(f.attrs["classes"]) == ["x", "y", "z"]
    for (t, s), want in PER_CLASS.items():
        assert counts[NAMES.index(t), NAMES.index(s)].tolist() == want
    assert not counts[np.arange(4), np.arange(4)].any()


def test_per_class_hdf5_falls_back_to_selected_pairs(tmp_path: Path) -> None:
    # 4*4*3*8 = 384 bytes > 100: only each student's best teacher (most positive flips) is stored.
    write_complementarity(tmp_path / "p.parquet", tmp_path / "c.h5", correct_matrix(), LABELS, 3, NAMES,
                          h5_max_bytes=100)
    with h5py.File(tmp_path / "c.h5") as f:
        assert f.attrs["scope"].startswith("selected pairs: for each student the teacher with the most")
        pairs = list(zip(f["teacher"].asstr()[:], f["student"].asstr()[:], strict=True))
        rows = f["pos_flips_per_class"][:]
    # student A: B, C, D give 3, 3, 0 -> B (first); B: A, C, D give 4, 4, 4 -> A; C: 1, 1, 1 -> A;
    # D: A 0, B 3, C 3 -> B.
    assert pairs == [("B", "A"), ("A", "B"), ("A", "C"), ("B", "D")]
    for (t, s), row in zip(pairs, rows, strict=True):
        assert row.tolist() == PER_CLASS[(t, s)]
    write_complementarity(tmp_path / "p.parquet", tmp_path / "c.h5", correct_matrix(), LABELS, 3, NAMES,
                          h5_max_bytes=100, pairs=[("C", "B"), ("A", "A"), ("D", "C")])
    with h5py.File(tmp_path / "c.h5") as f:
        assert "the pairs passed in" in f.attrs["scope"]
        assert f["pos_flips_per_class"][:].tolist() == [PER_CLASS[("C", "B")], PER_CLASS[("D", "C")]]


def test_forecast_hand_made_with_ties() -> None:
    # p_true (softmax of the true class) per model and sample; a tie never counts for the teacher.
    p_true = np.array([[0.5, 0.2, 0.9, 0.4],    # X
                       [0.3, 0.2, 0.95, 0.1],   # Y
                       [0.5, 0.6, 0.1, 0.4]],   # Z
                      dtype=np.float32)
    conf = np.array([[0.9, 0.5, 0.5, 0.7],
                     [0.9, 0.6, 0.4, 0.7],
                     [0.8, 0.5, 0.5, 0.71]], dtype=np.float32)
    correct = np.ones((3, 4), dtype=bool)
    table = pair_table(correct, np.zeros(4, dtype=np.int64), 1, ["X", "Y", "Z"], p_true, conf)
    got = {(r["teacher"], r["student"]): (r["forecast_dp"], r["forecast_dp_unsup"])
           for r in table.iter_rows(named=True)}
    # X>Y on samples 0 and 3 (1 is a tie); Y>X on 2; X>Z on 2 (0 and 3 tie); Z>X on 1; Y>Z on 2;
    # Z>Y on 0, 1, 3.  conf: X>Y on 2; Y>X on 1; X>Z on 0; Z>X on 3; Y>Z on 0, 1; Z>Y on 2, 3.
    assert got == {("X", "Y"): (50.0, 25.0), ("Y", "X"): (25.0, 25.0), ("X", "Z"): (25.0, 25.0),
                   ("Z", "X"): (25.0, 25.0), ("Y", "Z"): (25.0, 50.0), ("Z", "Y"): (75.0, 50.0)}


def test_pairwise_greater_exact_for_ties_signed_zero_and_dtypes() -> None:
    rng = np.random.default_rng(3)
    for m, dtype in [(3, np.float32), (4, np.float64), (5, np.float16), (260, np.float16), (260, np.float32)]:
        v = (rng.integers(-3, 4, (m, 40)) / 2).astype(dtype)
        v[0, :4] = -0.0
        v[1, :4] = 0.0
        want = (v[:, None, :] > v[None, :, :]).sum(-1)
        assert np.array_equal(pairwise_greater(v, rank_chunk=16), want), (m, dtype)
        assert np.array_equal(pairwise_greater(v, threads=1), want), (m, dtype)


def test_files_end_to_end(hand_files: list[Path], tmp_path: Path) -> None:
    names, correct, labels, acc = correctness_matrix(hand_files)
    assert names == NAMES
    assert np.array_equal(correct, correct_matrix())
    assert np.array_equal(labels, LABELS)
    assert acc.tolist() == pytest.approx([70.0, 60.0, 90.0, 70.0])
    table = complementarity(hand_files, tmp_path / "out" / "pairs.parquet", tmp_path / "out" / "per_class.h5")
    assert (tmp_path / "out" / "pairs.parquet").is_file() and (tmp_path / "out" / "per_class.h5").is_file()
    row = table.filter((pl.col("teacher") == "A") & (pl.col("student") == "B")).row(0, named=True)
    assert row["pos_flips"] == pytest.approx(40.0) and row["top50"] == 1
    # A and D have identical logits: equal softmax everywhere, so neither forecast favours either.
    ad = table.filter((pl.col("teacher") == "A") & (pl.col("student") == "D")).row(0, named=True)
    assert ad["forecast_dp"] == 0.0 and ad["forecast_dp_unsup"] == 0.0
    # All logits are 2 or 0: p_true is high where correct, low where wrong, so forecast_dp for A over
    # B counts exactly the samples where A is right and B wrong (4 of 10); confidences are all equal.
    assert row["forecast_dp"] == pytest.approx(40.0) and row["forecast_dp_unsup"] == 0.0
    assert not list(tmp_path.glob("out/.*tmp*"))


def test_softmax_statistics_from_logits(tmp_path: Path) -> None:
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 1.0, 3.0]], dtype=np.float32)
    labels = np.array([0, 1])
    files = [write_logits(tmp_path / "m.h5", logits, labels, model="m")]
    pred = load_predictions(files)
    e = np.exp(logits.astype(np.float64))
    p = e / e.sum(1, keepdims=True)
    assert pred.probs_true[0].tolist() == pytest.approx([p[0, 0], p[1, 1]], rel=1e-6)
    assert pred.conf[0].tolist() == pytest.approx([p[0, 0], p[1, 2]], rel=1e-6)


def test_refuses_files_on_different_data(tmp_path: Path) -> None:
    z = logits_for(CORRECT["A"], LABELS)
    a = write_logits(tmp_path / "a.h5", z, LABELS, fingerprint="aaaa", model="a")
    b = write_logits(tmp_path / "b.h5", z, LABELS, fingerprint="bbbb", model="b")
    with pytest.raises(KtError) as err:
        correctness_matrix([a, b])
    assert str(a) in str(err.value) and str(b) in str(err.value) and "dataset_fingerprint" in str(err.value)

    c = write_logits(tmp_path / "c.h5", z, LABELS, index=np.arange(10)[::-1], fingerprint=None, model="c")
    d = write_logits(tmp_path / "d.h5", z, LABELS, fingerprint=None, model="d")
    with pytest.raises(KtError, match="sample ids") as err:
        correctness_matrix([c, d])
    assert str(c) in str(err.value) and str(d) in str(err.value)

    e = write_logits(tmp_path / "e.h5", z, np.roll(LABELS, 1), fingerprint=None, model="e")
    with pytest.raises(KtError, match="different labels") as err:
        correctness_matrix([d, e])
    assert str(d) in str(err.value) and str(e) in str(err.value)


def test_refuses_duplicates_single_model_and_nan(tmp_path: Path) -> None:
    z = logits_for(CORRECT["A"], LABELS)
    a = write_logits(tmp_path / "a.h5", z, LABELS, model="same")
    b = write_logits(tmp_path / "b.h5", z, LABELS, model="same")
    with pytest.raises(KtError, match="appears twice"):
        correctness_matrix([a, b])
    with pytest.raises(KtError, match="at least two models"):
        complementarity([a], tmp_path / "p.parquet", tmp_path / "c.h5")
    bad = z.copy()
    bad[0, 0] = np.nan
    n = write_logits(tmp_path / "n.h5", bad, LABELS, model="nan")
    with pytest.raises(KtError, match="non-finite"):
        correctness_matrix([n])


# ----------------------------------------------------------------- vectorised == per-pair reference


def assert_matches_naive(correct: np.ndarray, labels: np.ndarray, num_classes: int,
                         p_true: np.ndarray | None = None, conf: np.ndarray | None = None, **kw) -> None:
    names = [f"m{i}" for i in range(len(correct))]
    table = pair_table(correct, labels, num_classes, names, p_true, conf, **kw)
    assert table.height == len(names) * (len(names) - 1)
    for row in table.iter_rows(named=True):
        t, s = int(row["teacher"][1:]), int(row["student"][1:])
        ref = naive_pair(correct[t], correct[s], labels, num_classes,
                         None if p_true is None else p_true[t], None if p_true is None else p_true[s],
                         None if conf is None else conf[t], None if conf is None else conf[s])
        for key in COLUMNS[2:]:
            if ref[key] is None:
                assert row[key] is None, key
            elif isinstance(ref[key], int):
                assert row[key] == ref[key], (key, t, s)
            else:
                assert row[key] == pytest.approx(ref[key], rel=1e-12, abs=1e-12), (key, t, s)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_vectorised_equals_naive_on_random_data(data: st.DataObject) -> None:
    m = data.draw(st.integers(2, 5), label="models")
    n = data.draw(st.integers(1, 60), label="samples")
    c = data.draw(st.integers(1, 6), label="classes")
    bools = st.lists(st.booleans(), min_size=m * n, max_size=m * n)
    correct = np.array(data.draw(bools), dtype=bool).reshape(m, n)
    labels = np.array(data.draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)), dtype=np.int64)
    few = st.sampled_from([0.0, 0.25, 0.5, 1.0])  # few distinct values: many ties
    p_true = np.array(data.draw(st.lists(few, min_size=m * n, max_size=m * n)), dtype=np.float32).reshape(m, n)
    conf = np.array(data.draw(st.lists(few, min_size=m * n, max_size=m * n)), dtype=np.float32).reshape(m, n)
    blocks = data.draw(st.sampled_from([1 << 29, 1]), label="block_bytes")  # 1: one teacher a block
    assert_matches_naive(correct, labels, c, p_true, conf, block_bytes=blocks, threads=2)


def test_vectorised_equals_naive_large_and_uneven_classes() -> None:
    # Classes of 300 and 5 samples (several 64-bit words a class, uint16 counts), an empty class,
    # small blocks and two threads.
    rng = np.random.default_rng(0)
    labels = np.concatenate([np.zeros(300, np.int64), np.full(5, 2), np.full(70, 3)])
    rng.shuffle(labels)
    correct = rng.random((5, len(labels))) < np.linspace(0.3, 0.9, 5)[:, None]
    p_true = rng.integers(0, 8, correct.shape).astype(np.float32) / 8
    assert_matches_naive(correct, labels, 5, p_true, None, block_bytes=1, threads=2)
    stats = flip_stats(correct, labels, 5)
    assert np.array_equal(np.diag(stats["count"]), np.zeros(5))


# ------------------------------------------------------------------ chunked float32 loading


def old_softmax_stats(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The loader's formula before issue 14, verbatim: whole array, float64, max-shifted."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    total = e.sum(axis=1)
    return (e[np.arange(len(z)), labels] / total).astype(np.float32), (1.0 / total).astype(np.float32)


def large_logits(rng: np.random.Generator, n: int, c: int) -> np.ndarray:
    """Logits far from 0 (offsets up to 1e4, spreads up to 3e3, a few rows near float32's limits)."""
    z = rng.standard_normal((n, c)) * rng.choice([0.1, 3.0, 50.0, 3e3], (n, 1)) + rng.choice([0, -1e4, 1e4], (n, 1))
    z[0] = np.linspace(-3e38, 3e38, c)  # z - max overflows to -inf for the lowest: exp is 0 either way
    z[1] = 1e4  # all tied: p = 1/c, the arg-max is class 0
    z[2, :] = -1e4
    z[2, 3] = 1e4 + 1e-1
    z[4] = np.roll(z[3], 5)  # the same logits at other positions: the same confidence, exactly
    return z.astype(np.float32)


def test_float32_chunked_loading_equals_old_float64_formula(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    n, c = 997, 37
    labels = rng.integers(0, c, n)
    labels[1] = 0  # the tied row: correct (arg-max is the first maximum)
    z = large_logits(rng, n, c)
    files = [write_logits(tmp_path / "big.h5", z, labels, model="big")]
    pred = load_predictions(files, threads=1, chunk_rows=100)
    p_old, conf_old = old_softmax_stats(z, labels)
    assert np.array_equal(pred.correct[0], z.argmax(axis=1) == labels)
    assert pred.correct[0, 1] and pred.probs_true.dtype == np.float32 and pred.conf.dtype == np.float32
    # float32 all the way vs float64 rounded to float32: ~1 ulp apart; tiny probabilities (float32
    # subnormals, below 1.2e-38) agree in absolute terms only
    np.testing.assert_allclose(pred.probs_true[0], p_old, rtol=1e-6, atol=np.finfo(np.float32).tiny)
    np.testing.assert_allclose(pred.conf[0], conf_old, rtol=1e-6, atol=0)
    assert pred.probs_true[0, 1] == pytest.approx(1 / c, rel=1e-6)
    assert pred.conf[0, 3] == pred.conf[0, 4]  # summed in float64: no order-dependent last bit (ties stay ties)
    assert (p_old > 1e-3).sum() > 100  # the comparison covered real probabilities, not only zeros


def test_chunking_threads_and_processes_give_identical_arrays(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    n, c = 1001, 23
    labels = rng.integers(0, c, n)
    files = [write_logits(tmp_path / f"m{i}.h5", (rng.standard_normal((n, c)) * 4).astype(np.float32), labels,
                          model=f"m{i}") for i in range(5)]
    ref = load_predictions(files, threads=1, chunk_rows=n)  # one block
    for kwargs in (dict(threads=1, chunk_rows=7), dict(threads=1, chunk_rows=300), dict(threads=2, chunk_rows=64),
                   dict(threads=3, chunk_rows=1), dict(threads=2, chunk_rows=333, pool="process")):
        got = load_predictions(files, **kwargs)
        assert got.names == ref.names, kwargs
        for key in ("correct", "probs_true", "conf", "labels"):
            assert np.array_equal(getattr(got, key), getattr(ref, key)), (key, kwargs)


def test_loading_row_chunked_float16_storage(tmp_path: Path) -> None:
    # The extract step's layout (LogitsWriter: HDF5 chunks of whole rows), stored as float16: read
    # back as float32, blocks aligned to the file's chunks.
    from kt.artifacts import LogitsWriter

    rng = np.random.default_rng(9)
    n, c = 3000, 300  # 873 rows a 1 MiB chunk of float16
    labels = rng.integers(0, c, n)
    z = (rng.standard_normal((n, c)) * 3).astype(np.float16)
    with h5py.File(tmp_path / "h.h5", "w") as f:
        writer = LogitsWriter(f, np.arange(n), labels, c, dtype="float16")
        writer.write(0, z)
        writer.flush()
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["model"] = "half"
    got = load_predictions([tmp_path / "h.h5"], threads=1, chunk_rows=1000)
    p_old, conf_old = old_softmax_stats(z.astype(np.float32), labels)
    assert np.array_equal(got.correct[0], z.astype(np.float32).argmax(axis=1) == labels)
    np.testing.assert_allclose(got.probs_true[0], p_old, rtol=1e-6, atol=np.finfo(np.float32).tiny)
    np.testing.assert_allclose(got.conf[0], conf_old, rtol=1e-6)


def test_parallel_loading_reports_the_first_bad_file(tmp_path: Path) -> None:
    z = logits_for(CORRECT["A"], LABELS)
    good = [write_logits(tmp_path / f"g{i}.h5", z, LABELS, model=f"g{i}") for i in range(4)]
    bad = z.copy()
    bad[5, 1] = -np.inf  # -inf alone: the row maximum stays finite
    inf = write_logits(tmp_path / "inf.h5", bad, LABELS, model="inf")
    with pytest.raises(KtError, match="non-finite") as err:
        load_predictions([*good[:2], inf, *good[2:]], threads=2, chunk_rows=3)
    assert str(inf) in str(err.value)
    other = write_logits(tmp_path / "other.h5", z, LABELS, fingerprint="other", model="other")
    with pytest.raises(KtError, match="dataset_fingerprint") as err:  # in file order: before inf.h5
        load_predictions([*good[:2], other, inf], threads=2)
    assert str(other) in str(err.value)
    out_of_range = write_logits(tmp_path / "oor.h5", z, np.full(10, 3), model="oor")
    with pytest.raises(KtError, match="labels outside 0..2"):
        load_predictions([out_of_range, *good], threads=2)
    with pytest.raises(KtError, match="different labels"):
        load_predictions([*good, out_of_range], threads=2)


# ------------------------------------------------------------------------------------ figures


def pair_frame(m: int, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    acc = rng.uniform(60, 90, m)
    t, s = np.divmod(np.arange(m * m), m)
    t, s = t[t != s], s[t != s]
    names = np.array([f"model{i:04d}" for i in range(m)])
    return pl.DataFrame({"teacher": names[t], "student": names[s], "teacher_acc": acc[t], "student_acc": acc[s],
                         "acc_diff": acc[t] - acc[s], "pos_flips": rng.uniform(1, 10, len(t))})


def test_flip_heatmap_small_annotated_large_by_accuracy(tmp_path: Path, figures: list) -> None:
    from kt.figures import plot_flip_heatmap

    small = pair_frame(5)
    assert plot_flip_heatmap(small, tmp_path / "small.png").stat().st_size > 1000
    ax = figures[-1].axes[0]
    assert len(ax.texts) == 20 and [t.get_text() for t in ax.get_xticklabels()] == [f"model{i:04d}" for i in range(5)]
    grid = ax.images[0].get_array()
    row = small.filter((pl.col("teacher") == "model0002") & (pl.col("student") == "model0004"))
    assert grid[2, 4] == pytest.approx(row["pos_flips"].item()) and grid.mask[3, 3]

    big = pair_frame(80)
    plot_flip_heatmap(big, tmp_path / "big.png")
    ax = figures[-1].axes[0]
    assert not ax.texts and len(ax.get_xticks()) <= 7 and "by accuracy" in ax.get_xlabel()
    acc = big.group_by("teacher").agg(pl.col("teacher_acc").first()).sort("teacher_acc")
    grid = ax.images[0].get_array()  # rows and columns ordered by accuracy, weakest first
    weakest, strongest = acc["teacher"][0], acc["teacher"][-1]
    cell = big.filter((pl.col("teacher") == strongest) & (pl.col("student") == weakest))
    assert grid[79, 0] == pytest.approx(cell["pos_flips"].item())


def test_knowledge_scatter_bins_a_zoo(tmp_path: Path, figures: list) -> None:
    from matplotlib.collections import PolyCollection

    from kt.figures import SCATTER_MAX_PAIRS, plot_knowledge_vs_accdiff

    plot_knowledge_vs_accdiff(pair_frame(6), tmp_path / "few.png")
    ax = figures[-1].axes[0]
    assert ax.get_legend() is not None and len(ax.collections) == 6  # one colour a student
    zoo = pair_frame(75)
    assert zoo.height > SCATTER_MAX_PAIRS
    plot_knowledge_vs_accdiff(zoo, tmp_path / "zoo.png")
    ax = figures[-1].axes[0]
    assert [type(c) for c in ax.collections] == [PolyCollection]  # hexbin, no dots
    assert ax.collections[0].get_array().sum() == zoo.height
