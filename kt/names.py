"""Names the workflow, the run folders and the tables share, importable without torch (the
workflow reads them at every dry run)."""

from kt.schema import choices

CONTROL = "ce"  # the control strategy: each run's Δ against it is reported when it runs
NO_TEACHER = "none"  # the teacher column of teacher-free runs (the control), one per student and seed
MODES = choices("multi_teacher", "modes")  # multi-teacher modes: sequential, parallel, soup
SOUP = "soup"  # averages the members' single-teacher students
RUN_MODES = tuple(m for m in MODES if m != SOUP)  # one multi-transfer job each


def reverse_of(strategy: str) -> str:
    """The strategy label of the reverse direction of a run that trains its teacher too (``bikd``):
    the teacher as the learner, taught by the student."""
    return f"{strategy}:reverse"
