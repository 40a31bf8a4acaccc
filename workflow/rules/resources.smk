# Job resources: threads, memory and wall time, from kt.resources (the estimates and their numbers
# live there). Snakemake evaluates them again just before it schedules a job, when the models' eval
# logits (the measurements) exist.


# Loader workers decode images beside the main process: a job's threads (and its SLURM CPUs) count
# both, and its memory adds ~500 MB a worker (a torch process with its prefetched batches).
TRANSFER_THREADS = config["transfer"]["workers"] + 1
# extract.workers: auto gives an image-folder extraction kt.resources.AUTO_EXTRACT_THREADS CPUs (its
# workers are the job's CPUs minus one), in-memory data one.
if config["extract"]["workers"] == "auto":
    EXTRACT_THREADS = kt_resources.AUTO_EXTRACT_THREADS if FACTS.decodes else 1
else:
    EXTRACT_THREADS = config["extract"]["workers"] + 1


def prepare_seconds(wildcards):
    """A model's preparation, as its source costs it in images' worth of forward passes."""
    return kt_resources.forward_seconds([model_cost(wildcards.model)], FACTS.preparations[wildcards.model])


def split_size(split):
    """Images in a split (``train``: the transfer set)."""
    return FACTS.split_sizes[split]


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
    cached = settings["cache_views"] > 0 and wildcards.strategy not in RUN_MODES and wildcards.strategy not in UNCACHED
    return sum(kt_resources.transfer_seconds(model_cost(wildcards.student), stage, cached=cached,
                                             trained=run_strategy(wildcards) in TRAINS_TEACHER,
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
    return kt_resources.complementarity_mb(len(MODELS), split_size("eval"), attempt)


def complementarity_minutes(wildcards, attempt):
    seconds = kt_resources.complementarity_seconds(len(MODELS), split_size("eval"))
    return kt_resources.runtime_min(seconds, safety=config["resources"]["safety"], attempt=attempt)
