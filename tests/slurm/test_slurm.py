"""The workflow on a real SLURM: the tiny config run once locally and once through the SLURM profile
(workflow/profiles/slurm) must give bit-identical logits, every job but the Snakefile's local rules
must have run as a SLURM job (and the local rules must save submissions), and
a job that fails inside SLURM must fail the run without leaving a partial artifact behind.

A single-node SLURM (Debian's Slurm 22.05, no accounting database) is started by
tests/slurm/start.sh for this module only and stopped again afterwards, so collecting the test suite
starts nothing. Outside CI the tests are skipped where the SLURM packages cannot be installed (not
root, no network); in CI (``$CI`` set) that is a failure. Run them alone with

    .venv/bin/python -m pytest tests/slurm -m slurm -v

Each Snakemake run has a hard timeout of 15 minutes (KT_SLURM_RUN_TIMEOUT, seconds).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml

from kt.artifacts import read_logits

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[2]
START = REPO / "tests/slurm/start.sh"
STOP = REPO / "tests/slurm/stop.sh"
PROFILE = "workflow/profiles/slurm"  # relative to REPO, exactly as a user types it
TINY_CONFIG = REPO / "tests/workflow/config.yaml"
RESULTS = yaml.safe_load(TINY_CONFIG.read_text())["results"]  # not "results": paths must follow it
# SLURM adds ~10 s per job: one seed, and no control strategy, keeps the DAG at the size the
# timeout was set for (the workflow test covers seeds and the control).
SLURM_TRANSFER = {"seeds": [0], "strategies": ["kl", "kl_dp", "kl_correct"]}
RUN_TIMEOUT_S = int(os.environ.get("KT_SLURM_RUN_TIMEOUT", 15 * 60))  # hard limit of one Snakemake run
START_TIMEOUT_S = 15 * 60  # apt-get update + install + daemons
CANNOT_INSTALL = 3  # start.sh's exit code when the packages are missing and cannot be installed

# Poll sooner than the profile's 20 s (the plugin needs MinJobAge >= 3x this; start.sh sets 3600 s):
# the plugin waits this long before its first status query, then 10 s longer before each next one
# until a job completes.
FAST_POLLING = ["--slurm-init-seconds-before-status-checks", "2"]

# Both runs execute the whole tiny DAG (zoo, extraction, complementarity, the select_pairs
# checkpoint, transfer, evaluation, summary): ~7 minutes through SLURM on 2 cores, mostly job
# start-up and status polling.
UNTIL: list[str] = []

SUBMITTED = re.compile(r"^Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (.+)\)\.$", re.M)
JOB_HEADER = re.compile(r"^(local)?(?:checkpoint|rule) (\w+):\n(?:    .*\n)*?    jobid: (\d+)$", re.M)
RUN_ID = re.compile(r"^SLURM run ID: (\S+)$", re.M)
LOCAL_RULES = {"all", "model_sizes", "select_pairs", "evaluate", "summarize"}  # the Snakefile's localrules


# --------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def slurm() -> None:
    """A running single-node SLURM for this module; stopped afterwards if this fixture started it."""
    try:
        proc = subprocess.run(["bash", str(START)], capture_output=True, text=True, timeout=START_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"tests/slurm/start.sh did not finish within {START_TIMEOUT_S}s:\n{_text(e.stderr)}")
    output = proc.stdout + proc.stderr
    if proc.returncode == CANNOT_INSTALL:
        reason = f"SLURM packages cannot be installed here (tests/slurm/start.sh): {output.strip()[-500:]}"
        if os.environ.get("CI"):
            pytest.fail(f"in CI the SLURM test must run, but {reason}")
        pytest.skip(reason)
    if proc.returncode != 0:
        pytest.fail(f"tests/slurm/start.sh failed (exit {proc.returncode}):\n{output[-6000:]}")
    started_here = "already running" not in output
    yield
    if started_here:
        stop = subprocess.run(["bash", str(STOP)], capture_output=True, text=True, timeout=120)
        if stop.returncode != 0:
            warnings.warn(f"tests/slurm/stop.sh failed: {stop.stderr[-2000:]}", stacklevel=1)


def tiny_config() -> dict:
    """The workflow test's tiny config, trimmed for SLURM (:data:`SLURM_TRANSFER`)."""
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["transfer"] |= SLURM_TRANSFER
    return config


@pytest.fixture(scope="module")
def configfile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("config") / "config.yaml"
    path.write_text(yaml.safe_dump(tiny_config()))
    return path


@pytest.fixture(scope="module")
def slurm_args(slurm, configfile: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """How the tests run the workflow through the SLURM profile on the test cluster.

    The cluster has no GPUs, while the profile (and the rules themselves) ask for one per GPU job,
    which sbatch would refuse. So every rule of the workflow gets gpu=0 -- all of them, read from
    `snakemake --list-rules`, so that a new GPU rule needs no change here; gpu=0 on a CPU rule is a
    no-op. (On the command line --set-resources replaces the profile's whole set-resources key.)
    """
    cmd = [sys.executable, "-m", "snakemake", "--list-rules", "--configfile", str(configfile),
           "--directory", str(tmp_path_factory.mktemp("rules"))]
    proc = subprocess.run(cmd, cwd=REPO, env=snakemake_env(), capture_output=True, text=True, timeout=300)
    rules = [line.strip() for line in proc.stdout.splitlines() if re.fullmatch(r"\w+", line.strip())]
    assert proc.returncode == 0 and "extract" in rules, proc.stdout + proc.stderr
    return ["--workflow-profile", PROFILE, "--set-resources", *(f"{rule}:gpu=0" for rule in rules), *FAST_POLLING]


@pytest.fixture(scope="module")
def slurm_and_local_runs(slurm_args, configfile: Path, tmp_path_factory: pytest.TempPathFactory
                         ) -> dict[str, tuple[Path, str]]:
    """The tiny workflow run twice from the repository root: locally, then through the SLURM profile."""
    local = tmp_path_factory.mktemp("local")
    local_out = run_snakemake(local, ["--cores", "2", *UNTIL], configfile)
    cluster = tmp_path_factory.mktemp("slurm")
    cluster_out = run_snakemake(cluster, [*slurm_args, *UNTIL], configfile)
    return {"local": (local, local_out), "slurm": (cluster, cluster_out)}


# ---------------------------------------------------------------------------------------- helpers


def _text(data: str | bytes | None) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def snakemake_env() -> dict[str, str]:
    """This environment with the venv first on PATH (sbatch exports it into every job), offline hubs,
    and nothing that would redirect Snakemake (a user profile, an enclosing SLURM job)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
    env.pop("SNAKEMAKE_PROFILE", None)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["HF_HUB_OFFLINE"] = "1"
    return env


def run_snakemake(workdir: Path, args: list[str], configfile: Path, targets: list[str] = (),
                  expect_success: bool = True) -> str:
    """Run the workflow from the repository root with ``--directory workdir``; return its output.

    Hard timeout: on expiry Snakemake gets SIGINT twice (it then cancels its SLURM jobs; the first one
    is sometimes lost), then its process group SIGKILL, then `scancel --name <run ID>` catches any job
    left, and the test fails with the tail of the output.
    """
    log = workdir / "snakemake.out"
    cmd = [sys.executable, "-m", "snakemake", "--directory", str(workdir), "--configfile", str(configfile),
           *args, *targets]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=snakemake_env(), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            stop_run(proc, log)
            pytest.fail(f"snakemake ran past {RUN_TIMEOUT_S}s: {' '.join(cmd)}\n{log.read_text()[-6000:]}")
    output = log.read_text()
    if expect_success and rc != 0:
        pytest.fail(f"snakemake failed (exit {rc}): {' '.join(cmd)}\n{output[-8000:]}")
    if not expect_success and rc == 0:
        pytest.fail(f"snakemake succeeded but should have failed: {' '.join(cmd)}\n{output[-4000:]}")
    return output


def stop_run(proc: subprocess.Popen, log: Path) -> None:
    """Stop a Snakemake run that ran past its time, and every SLURM job it submitted."""
    for _ in range(2):
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
            break
        except subprocess.TimeoutExpired:
            pass
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    run_id = RUN_ID.search(log.read_text())
    if run_id:
        subprocess.run(["scancel", "--name", run_id[1]], capture_output=True, timeout=30)


def job_rules(output: str) -> tuple[dict[int, str], set[int]]:
    """Snakemake job id -> rule for every job the run printed, and the ids of its local jobs."""
    rules, local = {}, set()
    for m in JOB_HEADER.finditer(output):
        rules[int(m[3])] = m[2]
        if m[1]:
            local.add(int(m[3]))
    return rules, local


def submissions(output: str) -> dict[int, tuple[str, Path]]:
    """Snakemake job id -> (SLURM job id, SLURM log file) for every sbatch submission of the run."""
    return {int(m[1]): (m[2], Path(m[3])) for m in SUBMITTED.finditer(output)}


def slurm_jobs(output: str) -> dict[str, dict[str, str]]:
    """SLURM's own record of this run's jobs (squeue keeps finished jobs for MinJobAge seconds)."""
    run_id = RUN_ID.search(output)
    assert run_id, "the SLURM executor did not print its run ID"
    proc = subprocess.run(["squeue", "--states=all", "--noheader", "--name", run_id[1], "-o", "%i|%T|%k|%Z"],
                          capture_output=True, text=True, timeout=30, check=True)
    jobs = {}
    for line in proc.stdout.splitlines():
        job_id, state, comment, workdir = line.split("|", 3)
        jobs[job_id.strip()] = {"state": state, "comment": comment, "workdir": workdir}
    return jobs


def result_files(workdir: Path) -> set[str]:
    return {str(p.relative_to(workdir)) for p in (workdir / RESULTS).rglob("*") if p.is_file()}


def temp_leftovers(workdir: Path) -> list[Path]:
    """Dot-files of kt's atomic writes (``.NAME.tmp-PID``) that were never renamed into place."""
    return sorted(workdir.rglob(".*.tmp-*"))


# ------------------------------------------------------------------------------------------ tests


def test_every_cluster_job_runs_as_a_slurm_job(slurm_and_local_runs):
    workdir, output = slurm_and_local_runs["slurm"]
    rules, local = job_rules(output)
    submitted = submissions(output)
    remote = {job: rule for job, rule in rules.items() if job not in local}
    assert {"train_zoo", "extract"} <= set(remote.values()), "the SLURM run printed no train_zoo/extract job"
    assert set(submitted) == set(remote), (
        f"jobs not submitted to SLURM: {sorted(set(remote) - set(submitted))}; "
        f"submissions without a job header: {sorted(set(submitted) - set(remote))}")
    assert {rules[j] for j in local} <= LOCAL_RULES, f"jobs ran on the submit host: {sorted(rules[j] for j in local)}"
    # The tiny rules ran on the submit host: fewer sbatch submissions than jobs (every job but `all`
    # was one before they were local rules).
    jobs_run = [j for j, rule in rules.items() if rule != "all"]
    assert {rules[j] for j in local} >= {"evaluate", "summarize", "select_pairs"}
    assert len(submitted) == len(jobs_run) - len(local & set(jobs_run)) < len(jobs_run)
    print(f"SLURM submissions: {len(submitted)} of {len(jobs_run)} jobs")

    # One SLURM log per job, in .snakemake/slurm_logs of the run's working directory, each written by
    # the job step's own Snakemake running exactly that rule.
    logs = sorted((workdir / ".snakemake/slurm_logs").rglob("*.log"))
    assert len(logs) == len(submitted), f"{len(submitted)} jobs, but SLURM logs: {logs}"
    for job, (slurm_id, log) in submitted.items():
        assert log.is_file() and log.stem == slurm_id and log.is_relative_to(workdir), log
        text = log.read_text()
        assert re.search(rf"^(?:rule|checkpoint) {remote[job]}:$", text, re.M), f"{log} lacks rule {remote[job]}"
        assert "Error in rule" not in text, f"{log}:\n{text[-3000:]}"

    # Each job, local or submitted, wrote its rule log and benchmark.
    for kind in ("logs", "benchmarks"):
        files = [p for p in (workdir / RESULTS / kind).rglob("*") if p.is_file()]
        assert len(files) == len(jobs_run), f"{len(jobs_run)} jobs, but {RESULTS}/{kind}: {files}"

    # SLURM's own view: every job of this run completed, in the run's working directory.
    jobs = slurm_jobs(output)
    assert set(jobs) == {slurm_id for slurm_id, _ in submitted.values()}, jobs
    for job, (slurm_id, _) in submitted.items():
        record = jobs[slurm_id]
        assert record["state"] == "COMPLETED", (slurm_id, record)
        assert record["comment"].startswith(f"rule_{remote[job]}"), (slurm_id, record)
        assert Path(record["workdir"]).resolve() == workdir.resolve(), (slurm_id, record)


def test_slurm_results_equal_local_results(slurm_and_local_runs):
    local, _ = slurm_and_local_runs["local"]
    cluster, _ = slurm_and_local_runs["slurm"]
    # Same artifacts, logs and benchmarks; no half-written files anywhere.
    assert result_files(cluster) == result_files(local)
    assert temp_leftovers(local) == [] and temp_leftovers(cluster) == []

    logits = sorted([*(local / RESULTS / "logits").rglob("*.h5"), *(local / RESULTS / "transfer").rglob("eval_*.h5")])
    assert len(list((local / RESULTS / "logits/eval").glob("*.h5"))) >= 3, logits
    for path in logits:
        a = read_logits(path)
        b = read_logits(cluster / path.relative_to(local))
        name = path.relative_to(local)
        assert a.logits.dtype == b.logits.dtype and np.array_equal(a.logits, b.logits), f"{name}: logits differ"
        assert np.array_equal(a.labels, b.labels), f"{name}: labels differ"
        assert np.array_equal(a.index, b.index), f"{name}: index differs"
        assert a.attrs["dataset_fingerprint"] == b.attrs["dataset_fingerprint"], name


def test_failing_slurm_job_fails_the_run_cleanly(slurm_args, tmp_path, tiny_resnet_spec):
    """Two jobs that pass validation (and `snakemake -n`) but fail inside their SLURM job: training a
    zoo model whose `drop_rate` is not a number, and extracting logits of a model with the same flaw
    from a local weight file (this one fails with its HDF5 temp file already open)."""
    config = tiny_config()
    resnet = next(m for m in config["zoo"]["models"] if m["id"].startswith("timm:resnet"))
    config["zoo"]["models"].append({**resnet, "name": "bad_train",
                                    "args": {**resnet["args"], "drop_rate": "not-a-number"}})
    spec = tiny_resnet_spec
    config["models"] = [{"id": spec.id, "name": "bad_extract", "weights": str(spec.weights),
                         "num_classes": spec.num_classes, "preprocess": dict(spec.preprocess),
                         "args": {**spec.args, "drop_rate": "not-a-number"}}]
    configfile = tmp_path / "config.yaml"
    configfile.write_text(yaml.safe_dump(config))
    targets = [f"{RESULTS}/zoo/bad_train.pth", f"{RESULTS}/logits/eval/bad_extract.h5"]

    output = run_snakemake(tmp_path, [*slurm_args, "--keep-going"],
                           configfile=configfile, targets=targets, expect_success=False)

    # Snakemake names both failed rules and where to look.
    assert re.search(r"^Error in rule train_zoo:$", output, re.M), output[-4000:]
    assert re.search(r"^Error in rule extract:$", output, re.M), output[-4000:]
    assert f"{RESULTS}/logs/zoo/bad_train.log" in output and f"{RESULTS}/logs/extract/eval/bad_extract.log" in output
    submitted = submissions(output)
    assert len(submitted) == 2, output[-4000:]
    # Each job failed inside SLURM, for the reason we planted (the rule logs say so) ...
    jobs = slurm_jobs(output)
    for slurm_id, log in submitted.values():
        assert jobs[slurm_id]["state"] == "FAILED", (slurm_id, jobs[slurm_id])
        assert f"SLURM-job '{slurm_id}' failed" in output
        assert log.is_file(), f"the SLURM log of failed job {slurm_id} was not kept: {log}"
    for rule_log in (f"{RESULTS}/logs/zoo/bad_train.log", f"{RESULTS}/logs/extract/eval/bad_extract.log"):
        assert "not-a-number" in (tmp_path / rule_log).read_text(), rule_log
    # ... and left nothing that looks like a result.
    for target in targets:
        assert not (tmp_path / target).exists(), f"partial artifact left behind: {target}"
    assert temp_leftovers(tmp_path) == []
