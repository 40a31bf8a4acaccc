# Config validation, the model grid and small helpers shared by every rule.

import json
import shlex
import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from kt.config import check as check_config
from kt.errors import KtError


validate(config, schema="../schemas/config.schema.yaml")

try:
    MODELS = check_config(config)  # slug -> kt.models.ModelSpec
except KtError as e:
    raise WorkflowError(f"config error: {e}") from None

RESULTS = config["results"]
ZOO = {m["name"]: m for m in config["zoo"].get("models", [])}
PLUGIN_ARGS = " ".join(f"--plugin-dir {shlex.quote(d)}" for d in config["plugin_dirs"])
# The interpreter running Snakemake has kt installed (this file imports it): jobs use the same one,
# so `.venv/bin/snakemake` works without activating the venv (and on cluster nodes sharing the path).
KT = f"{shlex.quote(sys.executable)} -m kt {PLUGIN_ARGS}"


wildcard_constraints:
    model="|".join(MODELS),
    zoo_model="|".join(ZOO) or "__none__",
    split="train|eval",


def as_arg(value):
    """A JSON value quoted for the shell: how rules hand specs and datasets to `kt`."""
    return shlex.quote(json.dumps(value, sort_keys=True))


def model_arg(wildcards):
    return as_arg(MODELS[wildcards.model].to_dict())


def model_weights(wildcards):
    """A zoo model's checkpoint (so extraction waits for training); nothing for other models."""
    return [MODELS[wildcards.model].weights] if wildcards.model in ZOO else []


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
    return logits("eval")
