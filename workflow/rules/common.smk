# Config validation, the model grid and small helpers shared by every rule.

import json
import shlex
import sys

from snakemake.exceptions import WorkflowError
from snakemake.settings.types import DeploymentMethod

from kt.config import check as check_config
from kt.config import validate as validate_config
from kt.errors import KtError


try:
    validate_config(config, workflow.source_path("../schemas/config.schema.yaml"))  # also fills defaults
    MODELS = check_config(config)  # slug -> kt.models.ModelSpec
except KtError as e:
    raise WorkflowError(f"config error: {e}") from None

RESULTS = config["results"]
ZOO = {m["name"]: m for m in config["zoo"].get("models", [])}
PLUGIN_ARGS = " ".join(f"--plugin-dir {shlex.quote(d)}" for d in config["plugin_dirs"])
# The interpreter running Snakemake has kt installed (this file imports it): jobs use the same one,
# so `.venv/bin/snakemake` works without activating the venv (and on cluster nodes sharing the path).
# With `--sdm conda`, jobs use the Python of workflow/envs/kt.yaml instead.
USE_CONDA = DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
KT = f"{'python' if USE_CONDA else shlex.quote(sys.executable)} -m kt {PLUGIN_ARGS}"
ENV = "../envs/kt.yaml"


STRATEGIES = config["transfer"]["strategies"]
RUN = f"{RESULTS}/transfer/{{strategy}}/{{teacher}}__{{student}}"
SETTINGS_KEYS = ("epochs", "batch_size", "lr", "momentum", "weight_decay", "augment", "seed", "eval_every",
                 "cache_views")


wildcard_constraints:
    model="|".join(MODELS),
    teacher="|".join(MODELS),
    student="|".join(MODELS),
    strategy="|".join(STRATEGIES),
    zoo_model="|".join(ZOO) or "__none__",
    split="train|eval",


def as_arg(value):
    """A JSON value quoted for the shell: how rules hand specs and datasets to `kt`."""
    return shlex.quote(json.dumps(value, sort_keys=True))


def model_arg(wildcards):
    return as_arg(MODELS[wildcards.model].to_dict())


def run_dir(wildcards):
    return RUN.format(**wildcards)


def weights_of(model):
    """A zoo model's checkpoint (so later steps wait for training); nothing for other models."""
    return [MODELS[model].weights] if model in ZOO else []


def model_weights(wildcards):
    return weights_of(wildcards.model)


def spec_arg(model):
    return as_arg(MODELS[model].to_dict())


def settings_arg(strategy):
    """TransferSettings as JSON: the shared keys plus this strategy's own options."""
    settings = {k: config["transfer"][k] for k in SETTINGS_KEYS}
    settings["device"] = config["device"]
    settings["options"] = config["transfer"]["options"].get(strategy, {}) if strategy else {}
    return as_arg(settings)


def frozen_cache(wildcards):
    if config["transfer"]["cache_views"] > 0:
        return f"{RESULTS}/transfer/cache/{wildcards.teacher}__{wildcards.student}.h5"
    return []


def selected_pairs():
    """(teacher, student) rows of results/pairs.parquet, once the select_pairs checkpoint ran."""
    import polars as pl

    path = checkpoints.select_pairs.get().output.pairs
    return pl.read_parquet(path).select("teacher", "student").iter_rows()


def run_files(name):
    """Input function: file ``name`` of every selected run (pairs x strategies)."""

    def files(wildcards):
        return [
            f"{RESULTS}/transfer/{strategy}/{teacher}__{student}/{name}"
            for teacher, student in selected_pairs()
            for strategy in STRATEGIES
        ]

    return files


def dataset_arg(wildcards=None):
    return as_arg(config["dataset"])


def zoo_dataset_arg(wildcards=None):
    subset = {"train": config["zoo"]["train_subset"]}
    return as_arg({**config["dataset"], "subset": subset})


def zoo_model_arg(wildcards):
    spec = MODELS[wildcards.zoo_model].to_dict()
    spec.pop("weights")
    return as_arg(spec)


def logits(split):
    return expand(f"{RESULTS}/logits/{split}/{{model}}.h5", model=MODELS)


def all_targets():
    return logits("eval") + [f"{RESULTS}/summary.parquet"]
