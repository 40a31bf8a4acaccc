# kt: find and transfer complementary knowledge between pretrained image classifiers.
# Table of contents: config -> zoo -> logits (extract) -> complementarity -> selection
#                    -> transfer (single and multi-teacher) -> evaluation -> summary
#                    (+ `snakemake --report`).

from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/inputs.smk"
include: "workflow/rules/resources.smk"
include: "workflow/rules/zoo.smk"
include: "workflow/rules/extract.smk"
include: "workflow/rules/complementarity.smk"
include: "workflow/rules/transfer.smk"
include: "workflow/rules/multi.smk"
include: "workflow/rules/evaluate.smk"


# Jobs of seconds run in the Snakemake process itself, not as cluster jobs that each wait in the
# queue: sizing models on the meta device, selecting pairs, one run's evaluation, the summary.
localrules:
    model_sizes,
    select_pairs,
    evaluate,
    summarize,


rule all:
    input:
        get_targets(),
    default_target: True
