"""Which teacher layers each student copies when a cohort is built from a teacher
(``ShoalModel.from_teacher``): a named plan ('bottom', 'spread', 'skip') or explicit layer
numbers. Plain lists, no torch: ``DistillConfig`` checks an explicit plan's shape before any
model loads.
"""

from __future__ import annotations

from shoal.errors import ConfigError

NAMED_PLANS = ("bottom", "spread", "skip")


def layer_plan(
    init: str | list[list[int]], n_students: int, m: int, n_teacher: int | None = None
) -> list[list[int]]:
    """Teacher layer indices each student copies (see :meth:`ShoalModel.from_teacher`).
    ``n_teacher`` may be None (the teacher not loaded yet) only for explicit plans: their
    shape is checked, the range of their layers is not."""
    if isinstance(init, list):
        plan = init
    elif init == "bottom":
        plan = [list(range(m)) for _ in range(n_students)]
    elif init == "spread":
        plan = [[(i * m + j) % n_teacher for j in range(m)] for i in range(n_students)]
    elif init == "skip":
        # evenly spaced, ending at the top: layer j copies teacher layer (j+1) * n/m - 1, so
        # the last layer is the one the copied head reads, and the first m-1 layers end where
        # the stacking target (the teacher's state at depth n * (m-1) / m) is taken
        top = [((j + 1) * 2 * n_teacher + m) // (2 * m) - 1 for j in range(m)]  # half up
        plan = [list(top) for _ in range(n_students)]
    else:
        plan = parse_layer_plan(init, n_students)
    if len(plan) != n_students or any(len(p) != m for p in plan):
        raise ConfigError(
            f"init plan {plan} does not fit {n_students} student(s) of {m} layers: give one "
            f"list of {m} teacher layers (every student) or one list per student"
        )
    bad = [t for p in plan for t in p if n_teacher is not None and not 0 <= t < n_teacher]
    if bad:
        raise ConfigError(f"init plan names layers {bad}; the teacher has 0..{n_teacher - 1}")
    return plan


def parse_layer_plan(text: str, n_students: int) -> list[list[int]]:
    """Teacher layers from text: '0,5' (every student copies layers 0 and 5) or '2,5/0,5'
    (one comma list per student, students separated by '/')."""
    try:
        plan = [[int(t) for t in part.split(",")] for part in text.split("/")]
    except ValueError:
        raise ConfigError(
            f"init={text!r} is not 'bottom', 'spread', 'skip' or a layer plan; write teacher "
            "layer numbers such as '0,5' (every student) or '2,5/0,5' (one list per student)"
        ) from None
    return plan * n_students if len(plan) == 1 else plan
