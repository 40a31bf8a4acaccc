# The config (validated, its plugins' answers from kt.facts), the models, the paths and small helpers
# every .smk file uses (input and param functions: inputs.smk; job resources: resources.smk).

import functools
import json
import math
import os
import re
import shlex
import sys
from dataclasses import fields, replace

from snakemake.exceptions import WorkflowError
from snakemake.settings.types import DeploymentMethod

from kt import resources as kt_resources
from kt.config import check_files, group_name, plugin_folders
from kt.config import validate as validate_config
from kt.errors import KtError
from kt.facts import code_record, dataset_fingerprint, facts
from kt.names import CONTROL, NO_TEACHER, RUN_MODES, SOUP
from kt.registry import BUILTIN_CODE
from kt.select import fixed_pairs, top_teachers
from kt.settings import TransferSettings
from kt.spec import PREPARED_ARG
from kt.transfer.run_folder import RunFolder

# Nothing imported here loads torch: a dry run reads the plugins' answers from kt.facts' cache, and
# imports the plugins (and torch) only when the config, a plugin or a library changed.
try:
    validate_config(config, workflow.source_path("../schemas/config.schema.yaml"))  # also fills defaults
    check_files(config)  # every parse: a deleted weights file fails the dry run, cached or not
    # the workflow's own plugins/ (beside the Snakefile, whatever --directory says), then plugin_dirs
    PLUGIN_DIRS = plugin_folders(config, workflow.basedir)
    FACTS = facts(config, PLUGIN_DIRS)
except KtError as e:
    raise WorkflowError(f"config error: {e}") from None
for failure in FACTS.failures:  # the others keep working; `kt plugins` shows the same
    print(f"kt: warning: {failure}", file=sys.stderr)
MODELS = FACTS.model_specs()  # slug -> kt.spec.ModelSpec

RESULTS = config["results"]
ZOO = {m["name"]: m for m in config["zoo"].get("models", [])}
# Models whose source builds an artifact once before any job loads them (e.g. a CLIP model's zero-shot
# head; ModelSource.preparation): the prepare_model rule writes it, every job of the model reads it.
PREPARED = {m: f"{RESULTS}/prepared/{m}.h5" for m in FACTS.preparations}
UNPREPARED = {m: MODELS[m] for m in PREPARED}  # the specs the artifacts are built from
MODELS = {m: replace(spec, args={**spec.args, PREPARED_ARG: PREPARED[m]}) if m in PREPARED else spec
          for m, spec in MODELS.items()}
PLUGIN_ARGS = " ".join(f"--plugin-dir {shlex.quote(d)}" for d in PLUGIN_DIRS)
# The interpreter running Snakemake has kt installed (this file imports it): jobs use the same one,
# so `.venv/bin/snakemake` works without activating the venv (and on cluster nodes sharing the path).
# With `--sdm conda`, jobs use the Python of workflow/envs/kt.yaml instead.
USE_CONDA = DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
KT = f"{'python' if USE_CONDA else shlex.quote(sys.executable)} -m kt {PLUGIN_ARGS}"
ENV = "../envs/kt.yaml"


STRATEGIES = config["transfer"]["strategies"]
OPTIONS = config["transfer"]["options"]
# Strategies without a teacher (the `ce` control) run once per student and seed, under the teacher
# name NO_TEACHER, instead of once per pair.
TEACHER_FREE = FACTS.teacher_free
UNCACHED = FACTS.uncached  # strategies that read what the frozen-output cache does not hold
TRAINS_TEACHER = FACTS.trains_teacher  # strategies whose teachers learn too (bikd)
PAIRED = [s for s in STRATEGIES if s not in TEACHER_FREE]
SEEDS = config["transfer"]["seeds"]
MULTI = config["multi_teacher"]
GROUPS = {group_name(g): g for g in MULTI["groups"]}  # name -> {student, teachers | top}
MODES = MULTI["modes"] if GROUPS else []
# One run folder layout for all: {strategy} is a strategy or a multi-teacher mode, {teacher} a model,
# a group or NO_TEACHER; with several seeds every run (and cache) gets a /seed{seed} level.
SEED_PART = f"{os.sep}seed{{seed}}" if len(SEEDS) > 1 else ""  # a path level, not an absolute path
RUN_NAME = f"{{strategy}}/{{teacher}}__{{student}}{SEED_PART}"
RUN = f"{RESULTS}/transfer/{RUN_NAME}"
# Un-augmented views are the same for every seed, so then one cache serves all of a pair's seeds.
CACHE_SEED_PART = SEED_PART if config["transfer"]["augment"] != "none" else ""
CACHE = f"{RESULTS}/transfer/cache/{{teacher}}__{{student}}{CACHE_SEED_PART}.h5"
RUN_OUTPUT = RunFolder.outputs(RUN)  # weights, before, after, metrics, config: kt.transfer.run_folder names them
# The transfer keys that are TransferSettings fields (options go per strategy, device is top-level).
SETTINGS_KEYS = [f.name for f in fields(TransferSettings) if f.name in config["transfer"] and f.name != "options"]


def one_of(names):
    return "|".join(map(re.escape, names)) or "__none__"


wildcard_constraints:
    model=one_of(MODELS),
    teacher=one_of([*MODELS, *GROUPS, NO_TEACHER]),
    student=one_of(MODELS),
    strategy=one_of(dict.fromkeys([*STRATEGIES, MULTI["strategy"], *MODES])),
    zoo_model=one_of(ZOO),
    split="train|eval",
    seed=one_of(map(str, SEEDS)),


def as_arg(value):
    """A JSON value quoted for the shell: how rules hand specs and datasets to `kt`."""
    return shlex.quote(json.dumps(value, sort_keys=True))


def model_files(model):
    """What a job loading ``model`` waits for: its weights file (a zoo checkpoint built here, or a
    configured ``weights:`` file: replacing it reruns the model's jobs), its preparation artifact."""
    if model not in MODELS:
        return []
    weights = [MODELS[model].weights] if MODELS[model].weights else []
    return weights + ([PREPARED[model]] if model in PREPARED else [])


DATASET_FILES = dataset_fingerprint(config["dataset"])
KT_CODE = BUILTIN_CODE  # the code of rules that run only kt's own (tables, figures)


def models_in(wildcards, role):
    """The models of wildcard ``role``: its model, or a run's teachers (none, one or a group's)."""
    return run_teachers(wildcards) if role == "teacher" else [getattr(wildcards, role)]


def get_seed(wildcards):
    """The run's seed: its wildcard, or the only seed (one seed keeps run paths without it)."""
    return int(getattr(wildcards, "seed", SEEDS[0]))


def run_path(strategy, teacher, student, seed, name=""):
    """File ``name`` of a run folder (the folder itself without ``name``)."""
    return f"{RUN.format(strategy=strategy, teacher=teacher, student=student, seed=seed)}/{name}".rstrip("/")


def selected_pairs():
    """(teacher, student) pairs: fixed by the policy (all, grid: planned at once), else the rows of
    results/pairs.parquet once the select_pairs checkpoint ran."""
    import polars as pl

    fixed = fixed_pairs(config["select"], list(MODELS))
    if fixed is not None:
        return fixed
    path = checkpoints.select_pairs.get().output.pairs
    return pl.read_parquet(path).select("teacher", "student").iter_rows()


def group_teachers(group):
    """A group's teachers: as listed, or its ``top`` k by positive flips on the student (read from
    the complementarity table once the select_pairs checkpoint, which needs it, has run)."""
    import polars as pl

    spec = GROUPS[group]
    if "teachers" in spec:
        return spec["teachers"]
    checkpoints.select_pairs.get()  # its input, the complementarity table, exists from here on
    return top_teachers(pl.read_parquet(rules.complementarity.output.table), spec["student"], spec["top"])


def member_runs(group, seed, name=""):
    """The single-teacher runs (multi_teacher.strategy) of a group's teachers into its student."""
    student = GROUPS[group]["student"]
    return [run_path(MULTI["strategy"], t, student, seed, name) for t in group_teachers(group)]


def run_teachers(wildcards):
    """The models a run treats as teachers: none, one, or a group's."""
    if wildcards.teacher == NO_TEACHER:
        return []
    return group_teachers(wildcards.teacher) if wildcards.teacher in GROUPS else [wildcards.teacher]


def run_strategy(wildcards):
    """The strategy a run trains with: its own, or a group's (``multi_teacher.strategy``)."""
    return MULTI["strategy"] if wildcards.strategy in RUN_MODES else wildcards.strategy


def run_learners(wildcards):
    """The models a run trains: the student, and its teachers for a strategy that trains them."""
    return [wildcards.student] + (run_teachers(wildcards) if run_strategy(wildcards) in TRAINS_TEACHER else [])


def run_frozen(wildcards):
    """The teachers a run only runs forward."""
    return [] if run_strategy(wildcards) in TRAINS_TEACHER else run_teachers(wildcards)


MODEL_SIZES = f"{RESULTS}/model_sizes.json"  # written by model_sizes (models built and run on the meta device)
# Configured models, hub or weight file: their parameters and activation bytes size CPU jobs' memory.
# Not the zoo (28-px models trained here: a checkpoint's size tells their parameters, activations are
# small) nor models with a preparation artifact (not built on the meta device without it).
SIZED = [m for m in MODELS if m not in PREPARED and m not in ZOO]
