# Input and param functions (get_*): what each job reads and the arguments it hands to `kt`.


def get_code(*roles, strategy=None):
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


def get_model_files(role):
    """Input function: the files (model_files) of the model in wildcard ``role`` (model, teacher, student)."""

    def files(wildcards):
        return model_files(getattr(wildcards, role))

    return files


def get_spec(role):
    """Param function: the JSON spec of the model in wildcard ``role``."""

    def param(wildcards):
        return as_arg(MODELS[getattr(wildcards, role)].to_dict())

    return param


def get_teacher_option(wildcards):
    """``--teacher SPEC``, or nothing for a teacher-free strategy's run."""
    if wildcards.teacher == NO_TEACHER:
        return ""
    return f"--teacher {as_arg(MODELS[wildcards.teacher].to_dict())}"


def get_run_dir(wildcards):
    return RUN.format(**wildcards)


def get_settings(strategy=None, run=True):
    """Param function: TransferSettings as JSON, the shared keys plus the run's seed, this
    strategy's own options (``None``: the run's ``strategy`` wildcard) and the results folder (where
    the trackers keep their stores). ``run=False`` (a cache build) leaves out what only a training run
    reads (``TransferSettings.RUN_ONLY``), so that changing it rebuilds no cache."""

    def param(wildcards):
        name = strategy or getattr(wildcards, "strategy", None)
        settings = {k: config["transfer"][k] for k in SETTINGS_KEYS}
        settings |= {"seed": get_seed(wildcards), "device": config["device"], "decode": config["decode"],
                     "eval_batch_size": config["extract"]["batch_size"], "options": OPTIONS.get(name, {}),
                     "results": RESULTS}
        if not run:
            settings = {k: v for k, v in settings.items() if k not in TransferSettings.RUN_ONLY}
        return as_arg(settings)

    return param


def get_cache(wildcards):
    if config["transfer"]["cache_views"] > 0 and wildcards.teacher != NO_TEACHER and wildcards.strategy not in UNCACHED:
        return CACHE.format(**wildcards)
    return []


def get_control_logits(wildcards):
    """Evaluate input: the control run's (``ce``) eval logits for the same student and seed, when
    the config runs the control; the run is then also compared with it."""
    if CONTROL not in STRATEGIES or wildcards.strategy == CONTROL:
        return []
    return run_path(CONTROL, NO_TEACHER, wildcards.student, get_seed(wildcards), RunFolder.OUTPUTS["after"])


def get_control_option(wildcards, input):
    return f"--control {input.control}" if input.control else ""


def get_cache_option(wildcards, input):
    return f"--cache {input.cache}" if input.cache else ""


def get_member_files(name):
    """Input function: file ``name`` of each member run of the group in wildcard ``teacher``."""

    def files(wildcards):
        return member_runs(wildcards.teacher, get_seed(wildcards), name)

    return files


def get_member_dirs(wildcards):
    return " ".join(member_runs(wildcards.teacher, get_seed(wildcards)))


def get_group_files(wildcards):
    """The zoo checkpoints of a group's teachers."""
    return [f for t in group_teachers(wildcards.teacher) for f in model_files(t)]


def get_group_specs(wildcards):
    return " ".join(as_arg(MODELS[t].to_dict()) for t in group_teachers(wildcards.teacher))


def get_run_files(name):
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


def get_teacher_logits(wildcards):
    """Eval logits of a run's teacher, or of every teacher of a group."""
    if wildcards.teacher == NO_TEACHER:
        return []
    teachers = group_teachers(wildcards.teacher) if wildcards.teacher in GROUPS else [wildcards.teacher]
    return [f"{RESULTS}/logits/eval/{t}.h5" for t in teachers]


def get_dataset(wildcards=None):
    return as_arg(config["dataset"])


def get_zoo_dataset(wildcards=None):
    subset = {"train": config["zoo"]["train_subset"]}
    return as_arg({**config["dataset"], "subset": subset})


def get_zoo_setting(key):
    """Param function: one training setting of the zoo model in wildcard ``zoo_model``."""

    def param(wildcards):
        return ZOO[wildcards.zoo_model][key]

    return param


def get_zoo_spec(wildcards):
    spec = MODELS[wildcards.zoo_model].to_dict()
    spec.pop("weights")
    return as_arg(spec)


def get_logits(split):
    return expand(f"{RESULTS}/logits/{split}/{{model}}.h5", model=MODELS)


def get_targets():
    return get_logits("eval") + [f"{RESULTS}/summary.parquet"]


def get_model_sizes(wildcards):
    """An extraction of a pretrained model waits for model_sizes.json, so that it is sized from it;
    ancient: a rebuilt file (a model added to the config) never reruns an extraction."""
    return ancient(MODEL_SIZES) if wildcards.model in SIZED else []
