# Config validation, the model grid and small helpers shared by every rule.

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

import kt
from kt import resources as kt_resources
from kt.config import check_files, group_name, plugin_folders
from kt.config import validate as validate_config
from kt.errors import KtError
from kt.facts import code_record, dataset_fingerprint, facts
from kt.names import CONTROL, NO_TEACHER, RUN_MODES, SOUP
from kt.select import fixed_pairs, top_teachers
from kt.settings import TransferSettings

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
# open_clip models read their zero-shot head from a file built once (rule zero_shot_head) instead
# of running the text tower in every job; HEAD_SPECS keep the specs the heads are built from.
HEADS = {m: f"{RESULTS}/heads/{m}.h5" for m, spec in MODELS.items() if spec.source == "open_clip"}
HEAD_SPECS = {m: MODELS[m] for m in HEADS}
MODELS = {m: replace(spec, args={**spec.args, "head": HEADS[m]}) if m in HEADS else spec for m, spec in MODELS.items()}
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
RUN_OUTPUT = dict(
    weights=f"{RUN}/student.pth",
    before=f"{RUN}/eval_before.h5",
    after=f"{RUN}/eval_after.h5",
    metrics=f"{RUN}/metrics.parquet",
    config=f"{RUN}/config.json",
)
# The transfer keys that are TransferSettings fields (options go per strategy, device is top-level).
SETTINGS_KEYS = [f.name for f in fields(TransferSettings) if f.name in config["transfer"] and f.name != "options"]
# Loader workers decode images beside the main process: a job's threads (and its SLURM CPUs) count
# both, and its memory adds ~500 MB a worker (a torch process with its prefetched batches).
TRANSFER_THREADS = config["transfer"]["workers"] + 1
# extract.workers: auto gives an image-folder extraction AUTO_EXTRACT_THREADS CPUs (a GPU node's
# usual share: its workers are the job's CPUs minus one), in-memory data one.
AUTO_EXTRACT_THREADS = 8
if config["extract"]["workers"] == "auto":
    EXTRACT_THREADS = AUTO_EXTRACT_THREADS if FACTS.decodes else 1
else:
    EXTRACT_THREADS = config["extract"]["workers"] + 1


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
    configured ``weights:`` file: replacing it reruns the model's jobs), an open_clip model's head."""
    if model not in MODELS:
        return []
    weights = [MODELS[model].weights] if MODELS[model].weights else []
    return weights + ([HEADS[model]] if model in HEADS else [])


DATASET_FILES = json.dumps(dataset_fingerprint(config["dataset"]), sort_keys=True)
KT_CODE = f"kt {kt.__version__}"  # the code of rules that run only kt's own (tables, figures)


def code_of(*roles, strategy=None):
    """Param function: the versions of the code and data a job's result depends on: of the model
    sources of the models in wildcards ``roles``, the dataset plugin, the strategy (``None``: the
    ``strategy`` wildcard's, if any; ``""``: none) (kt.facts.code_record: kt's version for built-ins, a folder
    plugin's file digest, a package's version) and of the dataset's files (kt.facts.dataset_fingerprint).
    Snakemake reruns a job when a parameter changes: editing a plugin reruns the jobs that used it."""

    def param(wildcards):
        models = [m for role in roles for m in models_in(wildcards, role)]
        name = getattr(wildcards, "strategy", None) if strategy is None else strategy
        record = code_record(FACTS.codes, [MODELS[m].source for m in models], config["dataset"]["name"],
                             [name] if name else [])
        return json.dumps(record | {"dataset files": DATASET_FILES}, sort_keys=True)

    return param


def models_in(wildcards, role):
    """The models of wildcard ``role``: its model, or a run's teachers (none, one or a group's)."""
    return run_teachers(wildcards) if role == "teacher" else [getattr(wildcards, role)]


def weights_of(role):
    """Input function: the files (model_files) of the model in wildcard ``role`` (model, teacher, student)."""

    def files(wildcards):
        return model_files(getattr(wildcards, role))

    return files


def spec_of(role):
    """Param function: the JSON spec of the model in wildcard ``role``."""

    def param(wildcards):
        return as_arg(MODELS[getattr(wildcards, role)].to_dict())

    return param


def teacher_option(wildcards):
    """``--teacher SPEC``, or nothing for a teacher-free strategy's run."""
    if wildcards.teacher == NO_TEACHER:
        return ""
    return f"--teacher {as_arg(MODELS[wildcards.teacher].to_dict())}"


def seed_of(wildcards):
    """The run's seed: its wildcard, or the only seed (one seed keeps run paths without it)."""
    return int(getattr(wildcards, "seed", SEEDS[0]))


def run_path(strategy, teacher, student, seed, name=""):
    """File ``name`` of a run folder (the folder itself without ``name``)."""
    return f"{RUN.format(strategy=strategy, teacher=teacher, student=student, seed=seed)}/{name}".rstrip("/")


def run_dir(wildcards):
    return RUN.format(**wildcards)


def settings_for(strategy=None):
    """Param function: TransferSettings as JSON, the shared keys plus the run's seed and this
    strategy's own options (``None``: the run's ``strategy`` wildcard)."""

    def param(wildcards):
        name = strategy or getattr(wildcards, "strategy", None)
        settings = {k: config["transfer"][k] for k in SETTINGS_KEYS}
        settings |= {"seed": seed_of(wildcards), "device": config["device"], "decode": config["decode"],
                     "eval_batch_size": config["extract"]["batch_size"], "options": OPTIONS.get(name, {})}
        return as_arg(settings)

    return param


def frozen_cache(wildcards):
    if config["transfer"]["cache_views"] > 0 and wildcards.teacher != NO_TEACHER:
        return CACHE.format(**wildcards)
    return []


def control_after(wildcards):
    """Evaluate input: the control run's (``ce``) eval logits for the same student and seed, when
    the config runs the control; the run is then also compared with it."""
    if CONTROL not in STRATEGIES or wildcards.strategy == CONTROL:
        return []
    return run_path(CONTROL, NO_TEACHER, wildcards.student, seed_of(wildcards), "eval_after.h5")


def control_option(wildcards, input):
    return f"--control {input.control}" if input.control else ""


def cache_option(wildcards, input):
    return f"--cache {input.cache}" if input.cache else ""


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


def member_files(name):
    """Input function: file ``name`` of each member run of the group in wildcard ``teacher``."""

    def files(wildcards):
        return member_runs(wildcards.teacher, seed_of(wildcards), name)

    return files


def member_dirs(wildcards):
    return " ".join(member_runs(wildcards.teacher, seed_of(wildcards)))


def group_weights(wildcards):
    """The zoo checkpoints of a group's teachers."""
    return [f for t in group_teachers(wildcards.teacher) for f in model_files(t)]


def group_specs(wildcards):
    return " ".join(as_arg(MODELS[t].to_dict()) for t in group_teachers(wildcards.teacher))


def run_files(name):
    """Input function: file ``name`` of every run, per seed: selected pairs x strategies (a
    teacher-free strategy once per student), then each group's modes and its members' runs."""

    def files(wildcards):
        pairs = list(selected_pairs())
        students = [s for _, s in pairs] + [spec["student"] for spec in GROUPS.values()]
        runs = []
        for seed in SEEDS:
            runs += [run_path(s, t, student, seed, name) for t, student in pairs for s in PAIRED]
            runs += [run_path(s, NO_TEACHER, student, seed, name) for student in students for s in TEACHER_FREE]
            for group, spec in GROUPS.items():
                runs += [run_path(mode, group, spec["student"], seed, name) for mode in MODES]
                runs += member_runs(group, seed, name)
        return list(dict.fromkeys(runs))

    return files


def teacher_logits(wildcards):
    """Eval logits of a run's teacher, or of every teacher of a group."""
    if wildcards.teacher == NO_TEACHER:
        return []
    teachers = group_teachers(wildcards.teacher) if wildcards.teacher in GROUPS else [wildcards.teacher]
    return [f"{RESULTS}/logits/eval/{t}.h5" for t in teachers]


def dataset_arg(wildcards=None):
    return as_arg(config["dataset"])


def zoo_dataset_arg(wildcards=None):
    subset = {"train": config["zoo"]["train_subset"]}
    return as_arg({**config["dataset"], "subset": subset})


def zoo_setting(key):
    """Param function: one training setting of the zoo model in wildcard ``zoo_model``."""

    def param(wildcards):
        return ZOO[wildcards.zoo_model][key]

    return param


def zoo_model_arg(wildcards):
    spec = MODELS[wildcards.zoo_model].to_dict()
    spec.pop("weights")
    return as_arg(spec)


def logits(split):
    return expand(f"{RESULTS}/logits/{split}/{{model}}.h5", model=MODELS)


def all_targets():
    return logits("eval") + [f"{RESULTS}/summary.parquet"]


# Job resources (kt/resources.py): memory from the models' parameter counts and the loader workers,
# wall time from images x passes over each model's measured throughput. Snakemake evaluates them
# again just before it schedules a job, when the models' eval logits (the measurements) exist.


def head_seconds(wildcards):
    """The text tower over classes x templates, as fast as the image tower (a stand-in)."""
    from kt.plugins.open_clip_source import prompt_templates  # open_clip models only: it imports torch

    prompts = FACTS.classes * len(prompt_templates(HEAD_SPECS[wildcards.model].args.get("templates", "openai")))
    return kt_resources.forward_seconds([model_cost(wildcards.model)], prompts)


def split_size(split):
    """Images in a split (``train``: the transfer set)."""
    return FACTS.split_sizes[split]


MODEL_SIZES = f"{RESULTS}/model_sizes.json"  # written by model_sizes (models built and run on the meta device)
# Configured models, hub or weight file: their parameters and activation bytes size CPU jobs' memory.
# Not the zoo (28-px models trained here: a checkpoint's size tells their parameters, activations are
# small) nor open_clip models (not built on the meta device: their head needs the text tower).
SIZED = [m for m in MODELS if m not in HEADS and m not in ZOO]


def model_cost(model):
    """Parameters and images/s of ``model`` from its eval logits; before them its parameters from
    its checkpoint's size (zoo models, weight files) or model_sizes.json (hub models)."""
    spec = MODELS[model]
    size = (spec.preprocess or {}).get("size", 224)
    sized = known_sizes(os.path.getmtime(MODEL_SIZES) if os.path.isfile(MODEL_SIZES) else None).get(model)
    logits = f"{RESULTS}/logits/eval/{model}.h5"
    speed = config["resources"]["images_per_s"]
    if os.path.isfile(logits):
        cost = measured_cost(logits, size)
    elif spec.weights and os.path.isfile(spec.weights):
        cost = kt_resources.ModelCost(os.path.getsize(spec.weights) // 4, speed, size)
    else:
        cost = kt_resources.ModelCost(kt_resources.UNKNOWN_PARAMS, speed, size)
    return cost.with_sizes(sized)


@functools.cache
def known_sizes(mtime):
    """model_sizes.json, read once per version of the file (it appears while Snakemake runs)."""
    if mtime is None:
        return {}
    with open(MODEL_SIZES) as f:
        return json.load(f)


@functools.cache
def measured_cost(logits, size):
    """A model's measured cost, read once per Snakemake process (thousands of jobs share a model)."""
    return kt_resources.ModelCost.read(logits, config["resources"]["images_per_s"], size)


def sizes_input(wildcards):
    """An extraction of a pretrained model waits for model_sizes.json, so that it is sized from it;
    ancient: a rebuilt file (a model added to the config) never reruns an extraction."""
    return ancient(MODEL_SIZES) if wildcards.model in SIZED else []


def run_teachers(wildcards):
    """The models a run treats as frozen teachers: none, one, or a group's."""
    if wildcards.teacher == NO_TEACHER:
        return []
    return group_teachers(wildcards.teacher) if wildcards.teacher in GROUPS else [wildcards.teacher]


def runtime_of(seconds):
    """Resource function: minutes for a job whose estimated seconds ``seconds(wildcards)`` gives."""

    def minutes(wildcards, attempt):
        return kt_resources.runtime_min(seconds(wildcards), safety=config["resources"]["safety"], attempt=attempt)

    return minutes


# Activations count in a job's host memory unless it runs on a GPU (device: cuda); auto may mean a CPU.
ON_CPU = not config["device"].startswith("cuda")


def memory_of(students, frozen, section):
    """Resource function: MB for a job training ``students(wildcards)`` beside ``frozen(wildcards)``,
    with the batch and loader workers (threads - 1) of config ``section`` (transfer or extract)."""
    workers = (EXTRACT_THREADS if section == "extract" else TRANSFER_THREADS) - 1

    def mb(wildcards, attempt):
        return kt_resources.memory_mb(students=[model_cost(m) for m in students(wildcards)],
                                      frozen=[model_cost(m) for m in frozen(wildcards)],
                                      batch=config[section]["batch_size"], workers=workers, attempt=attempt,
                                      eval_batch=config["extract"]["batch_size"], cpu=ON_CPU)

    return mb


def extract_seconds(wildcards):
    return kt_resources.forward_seconds([model_cost(wildcards.model)], split_size(wildcards.split))


def cache_seconds(wildcards):
    images = split_size("train") * config["transfer"]["cache_views"]
    return kt_resources.forward_seconds([model_cost(wildcards.teacher), model_cost(wildcards.student)], images)


def transfer_seconds(wildcards):
    """A run: one transfer, or a group's (sequential: one transfer per teacher; parallel: all at once)."""
    settings = config["transfer"]
    teachers = [model_cost(t) for t in run_teachers(wildcards)]
    stages = [[t] for t in teachers] if wildcards.strategy == "sequential" else [teachers]
    evaluations = 1 + (settings["epochs"] // settings["eval_every"] if settings["eval_every"] else 0)
    cached = settings["cache_views"] > 0 and wildcards.strategy not in RUN_MODES
    return sum(kt_resources.transfer_seconds(model_cost(wildcards.student), stage, cached=cached,
                                             train_images=split_size("train"), eval_images=split_size("eval"),
                                             epochs=settings["epochs"], evaluations=evaluations)
               for stage in stages)


def soup_seconds(wildcards):
    """Averaging is instant; batch-norm recalibration runs the transfer set, then the evaluation."""
    images = split_size("eval") + (split_size("train") if MULTI["soup_batchnorm"] == "recalibrate" else 0)
    return kt_resources.forward_seconds([model_cost(wildcards.student)], images)


def the(role):
    """``[wildcards.role]``: the one model a resource function sizes."""
    return lambda wildcards: [getattr(wildcards, role)]


def complementarity_mb(wildcards, attempt):
    """Per model and eval sample: correctness and two float32 statistics held (9 B), the table's
    block working memory and libraries on top (benchmarks/README.md, section complementarity)."""
    held = len(MODELS) * split_size("eval") * 9 / 2**20
    return int(math.ceil((kt_resources.BASE_MB + 2 * held) * attempt / 500) * 500)


def complementarity_minutes(wildcards, attempt):
    """Per 50,000 eval samples: loading ~0.25 s a file (1000 classes) and the table ~30 us a pair
    on 2 cores (benchmarks/README.md, section complementarity)."""
    scale = split_size("eval") / 50_000
    seconds = scale * (0.25 * len(MODELS) + 3e-5 * len(MODELS) ** 2)
    return kt_resources.runtime_min(seconds, safety=config["resources"]["safety"], attempt=attempt)
