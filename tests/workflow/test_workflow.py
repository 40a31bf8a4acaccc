"""The whole DAG on the tiny config: every artifact exists and agrees with every other one."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from kt.artifacts import artifact_info, read_logits
from kt.metrics import run_metrics
from kt.transfer.rows import epoch_rows

pytestmark = pytest.mark.workflow
REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "tests" / "workflow" / "config.yaml"
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
# Injected into a copy of the report: where the landing page's table (its scroll box) ends, where the
# DAG drawing begins, and the title's top, once the page has drawn itself.
GEOMETRY = """<script>setTimeout(function () {
  var q = function (s) { return document.querySelector(s).getBoundingClientRect(); };
  var out = document.createElement("pre"); out.id = "geometry";
  var dag = q("#rulegraph svg, #rulegraph canvas");
  out.textContent = [q(".kt-overview").right, dag.left, q(".prose h1").top].join(" ");
  document.body.appendChild(out);
}, 2000);</script>"""


def snakemake(workdir: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    cmd = [*SNAKEMAKE, "--directory", str(workdir), "--configfile", str(CONFIG), *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("workflow")
    done = snakemake(workdir, "--cores", "2")
    assert done.returncode == 0, done.stderr[-4000:]
    assert not (workdir / "results").exists()  # the config says results: out
    return workdir / "out"


def test_every_model_has_eval_logits_on_the_same_samples(run: Path) -> None:
    files = sorted((run / "logits" / "eval").glob("*.h5"))
    assert [f.stem for f in files] == ["mobilenet", "resnet", "vit"]
    logits = [read_logits(f) for f in files]
    assert len({lf.attrs["dataset_fingerprint"] for lf in logits}) == 1
    for lf in logits:
        assert lf.logits.shape == (300, 10)
        assert lf.attrs["weights_origin"].startswith("file:") and lf.attrs["weights_origin"].endswith(".pth")
        assert lf.attrs["accuracy"] == pytest.approx(lf.accuracy)


def test_complementarity_table_recomputes_from_logits(run: Path) -> None:
    table = pl.read_parquet(run / "complementarity" / "pairs.parquet")
    assert table.height == 6
    assert (table["teacher"] != table["student"]).all()
    files = {f.stem: read_logits(f) for f in (run / "logits" / "eval").glob("*.h5")}
    for row in table.iter_rows(named=True):
        t, s = files[row["teacher"]], files[row["student"]]
        right_t, right_s = t.predictions == t.labels, s.predictions == s.labels
        assert row["pos_flips"] == pytest.approx(100 * (right_t & ~right_s).mean())
        assert row["neg_flips"] == pytest.approx(100 * (~right_t & right_s).mean())
        assert row["teacher_acc"] == pytest.approx(t.accuracy)
    assert artifact_info(run / "complementarity" / "per_class.h5")["datasets"]
    assert (run / "figures" / "flip_heatmap.png").stat().st_size > 1000


def test_transfer_runs_and_metrics_are_consistent(run: Path) -> None:
    pairs = pl.read_parquet(run / "pairs.parquet")
    assert pairs.height >= 1 and (pairs["teacher"] != pairs["student"]).all()
    summary = pl.read_parquet(run / "summary.parquet")
    runs = summary.filter(pl.col("scope") == "run")
    # per seed (0, 1): kl, kl_dp and the example plugin's kl_correct per pair; the control ce once per student
    assert runs.filter("selected").height == 2 * (pairs.height * 3 + pairs["student"].n_unique())
    assert sorted(runs["seed"].unique()) == [0, 1]
    files = {f.stem: read_logits(f) for f in (run / "logits" / "eval").glob("*.h5")}
    control = {}  # (student, seed) -> the control run's eval predictions
    for folder in (run / "transfer" / "ce").iterdir():
        assert folder.name.startswith("none__")  # one run per student, without a teacher
        for seed in (0, 1):
            after = read_logits(folder / f"seed{seed}" / "eval_after.h5")
            control[folder.name.removeprefix("none__"), seed] = after.predictions
    assert {s for s, _ in control} == set(runs["student"])
    for row in runs.iter_rows(named=True):
        folder = run / "transfer" / row["strategy"] / f"{row['teacher']}__{row['student']}" / f"seed{row['seed']}"
        before, after = read_logits(folder / "eval_before.h5"), read_logits(folder / "eval_after.h5")
        student = files[row["student"]]
        teachers = (before.predictions[None] if row["teacher"] == "none"
                    else np.stack([files[t].predictions for t in row["members"].split(",")]))
        assert before.attrs["dataset_fingerprint"] == student.attrs["dataset_fingerprint"]
        np.testing.assert_allclose(before.logits, student.logits, rtol=1e-4, atol=1e-4)
        reference = None if row["strategy"] == "ce" else control[row["student"], row["seed"]]
        expected = run_metrics(before.predictions, after.predictions, teachers, before.labels, 10, control=reference)
        for key, value in expected.items():
            assert row[key] == pytest.approx(value), key
        assert json.loads((folder / "config.json").read_text())["settings"]["seed"] == row["seed"]
        assert row["student_family"] == student.attrs["family"]
        assert row["student_params"] == student.attrs["params"] > 0
        # the test of Δ, recomputed by hand from the stored eval logits: exact two-sided McNemar
        right_b, right_a = before.predictions == before.labels, after.predictions == after.labels
        gained, lost = int((~right_b & right_a).sum()), int((right_b & ~right_a).sum())
        assert (row["gained"], row["lost"]) == (gained, lost)
        changed, fewer = gained + lost, min(gained, lost)
        p = min(1.0, 2 * sum(math.comb(changed, i) for i in range(fewer + 1)) / 2**changed) if changed else 1.0
        assert row["mcnemar_p"] == pytest.approx(p, rel=1e-9) and row["significant"] == (p < 0.05)
        assert row["delta_ci_low"] <= row["delta"] <= row["delta_ci_high"]
        epochs = epoch_rows(pl.read_parquet(folder / "metrics.parquet"))
        assert epochs["epoch"].to_list() == ([0, 1, 2] if row["strategy"] == "sequential" else [0, 1])
        config = json.loads((folder / "config.json").read_text())
        assert config.get("mode", config["strategy"]) == row["strategy"]
        assert not (folder / "state.pt").exists()
    families = {m: files[m].attrs["family"] for m in files}
    assert families == {"mobilenet": "cnn", "resnet": "cnn", "vit": "transformer"}
    per_pair = summary.filter(pl.col("scope") == "pair")
    assert (per_pair["n_seeds"] == 2).all() and per_pair.height == runs.height // 2
    row = per_pair.row(0, named=True)
    seeds = runs.filter((pl.col("strategy") == row["strategy"]) & (pl.col("teacher") == row["teacher"])
                        & (pl.col("student") == row["student"]))["delta"]
    assert (row["delta"], row["seed_sd"]) == pytest.approx((seeds.mean(), seeds.std()))
    assert row["seed_spread_exceeds_effect"] == (seeds.std() > abs(seeds.mean()))
    strategies = summary.filter(pl.col("scope") == "strategy")
    assert sorted(strategies["strategy"].to_list()) == ["ce", "kl", "kl_correct", "kl_dp"]
    for row in strategies.filter(pl.col("strategy") != "ce").iter_rows(named=True):  # Δ vs control, per pair
        chosen = runs.filter(pl.col("selected") & (pl.col("strategy") == row["strategy"]))
        assert row["mean_delta_vs_control"] == pytest.approx(chosen["delta_vs_control"].mean())
    assert ((strategies["success_rate"] >= 0) & (strategies["success_rate"] <= 100)).all()
    assert {p.name for p in (run / "figures" / "transfer").glob("*.png")} >= {
        "success_rate.png", "delta_vs_accdiff.png", "gain_vs_loss.png", "epoch_curves.png", "multi_teacher.png"}
    taught = runs.filter(pl.col("teacher") != "none").select("teacher", "student").unique().rows()
    assert {p.name for p in (run / "figures" / "pair_curves").glob("*.png")} == {f"{t}__{s}.png" for t, s in taught}
    per_run = run / "figures" / "run_curves"
    assert {p.relative_to(per_run).as_posix() for p in per_run.rglob("*.png")} == {
        f"{r['strategy']}/seed{r['seed']}/{r['teacher']}__{r['student']}.png" for r in runs.iter_rows(named=True)}


def test_multi_teacher_group(run: Path) -> None:
    """top 2 of 3 models for the ResNet student: both others, in every mode, next to their single runs
    (per seed; seed 1 checked)."""
    summary = pl.read_parquet(run / "summary.parquet").filter(pl.col("seed") == 1)
    group = summary.filter(pl.col("scope") == "group").row(0, named=True)
    assert (group["teacher"], group["student"], group["members"]) == ("top2", "resnet", "mobilenet,vit")
    runs = summary.filter(pl.col("scope") == "run")
    singles = runs.filter((pl.col("strategy") == "kl_dp") & (pl.col("student") == "resnet")
                          & pl.col("teacher").is_in(["mobilenet", "vit"]))["delta"]
    assert group["n_single"] == 2
    assert (group["single_min_delta"], group["single_max_delta"]) == pytest.approx((singles.min(), singles.max()))
    for mode in ("sequential", "parallel", "soup"):
        delta = runs.filter((pl.col("strategy") == mode) & (pl.col("teacher") == "top2"))["delta"].item()
        assert group[f"{mode}_delta"] == pytest.approx(delta)
    transfer = run / "transfer"
    stages = sorted(p.name for p in (transfer / "sequential" / "top2__resnet" / "seed1" / "stages").iterdir())
    accuracy = {m: read_logits(run / "logits" / "eval" / f"{m}.h5").accuracy for m in ("mobilenet", "vit")}
    assert stages == [f"{k}_{m}" for k, m in enumerate(sorted(accuracy, key=accuracy.get), 1)]  # weakest first
    soup = torch.load(transfer / "soup" / "top2__resnet" / "seed1" / "student.pth", weights_only=True)
    members = [torch.load(transfer / "kl_dp" / f"{t}__resnet" / "seed1" / "student.pth", weights_only=True)
               for t in ("mobilenet", "vit")]
    for key, value in soup.items():
        if value.dtype.is_floating_point:
            mean = (members[0][key].double() + members[1][key].double()) / 2
            torch.testing.assert_close(value, mean.to(value.dtype))


def test_nothing_half_written_and_rerun_is_a_no_op(run: Path) -> None:
    assert not [p for p in run.rglob(".*.tmp-*")]
    dry = snakemake(run.parent, "-n", "--cores", "2")
    assert dry.returncode == 0
    assert "Nothing to be done" in dry.stdout + dry.stderr


def test_report_renders_in_a_real_browser(run: Path, tmp_path: Path) -> None:
    report = run.parent / "report.html"
    done = snakemake(run.parent, "--report", str(report))
    assert done.returncode == 0, done.stderr[-3000:]
    html = report.read_text()
    assert "flip_heatmap.png" in html and "summary.csv" in html
    # the landing page: what to read first, and the per-strategy table with the summary's numbers
    assert "What to read first" in html
    overview = pl.read_csv(run / "report" / "overview.csv", infer_schema=False)  # the text as shown
    strategies = pl.read_parquet(run / "summary.parquet").filter(pl.col("scope") == "strategy")
    assert overview.columns[:7] == ["strategy", "runs", "pairs", "success rate % [95 % CI]", "significant gain %",
                                    "significant harm %", "mean Δ [95 % CI]"]
    assert "Δ vs ce [95 % CI]" in overview.columns
    assert overview["strategy"].to_list() == strategies["strategy"].to_list()
    # few pairs: no bootstrap interval (kt.stats.MIN_ROWS), the estimate alone
    assert overview["mean Δ [95 % CI]"].to_list() == [f"{v:+.2f}" for v in strategies["mean_delta"]]
    landing = html.split("What to read first")[0]  # the page embeds it as a JSON string
    for cell in ["success rate % [95 % CI]", "mean Δ [95 % CI]", *overview["strategy"], *overview["mean Δ [95 % CI]"]]:
        assert json.dumps(cell)[1:-1] in landing, cell
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (make test installs it)")
    shot = REPO / "results" / "test-artifacts" / "report.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run",
                    f"--user-data-dir={tmp_path / 'chrome'}", "--window-size=1400,1000",
                    f"--screenshot={shot}", report.as_uri()], check=True, timeout=120, capture_output=True)
    assert shot.stat().st_size > 10_000
    # at 1400 px the table ends left of the DAG drawing (it used to run under it) and the title is on screen
    probe = tmp_path / "geometry.html"
    head, tail = html.rsplit("</body>", 1)
    probe.write_text(head + GEOMETRY + "</body>" + tail)
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                          f"--user-data-dir={tmp_path / 'chrome'}", "--window-size=1400,1000",
                          "--virtual-time-budget=8000", "--dump-dom", probe.as_uri()],
                         check=True, timeout=120, capture_output=True, text=True).stdout
    table_right, dag_left, title_top = map(float, re.search(r'<pre id="geometry">([^<]*)</pre>', dom)[1].split())
    assert table_right <= dag_left and title_top >= 0
    assert "Training curves" in html and "top2__resnet.png" in html
