# kt: find and transfer complementary knowledge between pretrained image classifiers.
# Table of contents: config -> zoo -> logits (extract) -> complementarity -> selection
#                    -> transfer (single and multi-teacher) -> evaluation -> summary
#                    (+ `snakemake --report`).

from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/zoo.smk"
include: "workflow/rules/extract.smk"
include: "workflow/rules/complementarity.smk"
include: "workflow/rules/transfer.smk"
include: "workflow/rules/multi.smk"
include: "workflow/rules/evaluate.smk"


rule all:
    input:
        all_targets(),
    default_target: True
