"""``shoal demo``'s printed report: aligned columns, accuracy by k, and a note where more
students score lower."""

from shoal.demo import format_report


def _report(scores: list[float], served: bool = True) -> dict:
    report = {
        "teacher_test": {"accuracy": 0.7368},
        "cohort_prefix": [{"k": i + 1, "test_accuracy": a} for i, a in enumerate(scores)],
        "seconds": 12.5,
    }
    if served:
        report["served"] = {
            "shoal": {
                "p50_ms": 7.1,
                "p99_ms": 40.25,
                "throughput_rps": 20.3,
                "accuracy": 0.7,
                "mean_students_used": 2.4,
            },
            "teacher-torch": {
                "p50_ms": 31.0,
                "p99_ms": 1200.0,
                "throughput_rps": 19.0,
                "accuracy": 0.7368,
                "mean_students_used": None,
            },
        }
    return report


def test_served_rows_align_with_the_header_and_missing_values_keep_their_column():
    lines = format_report(_report([0.70, 0.71, 0.72])).splitlines()
    start = lines.index("served under the same bursty workload:") + 1
    header, shoal, teacher = lines[start : start + 3]
    assert len(header) == len(shoal) == len(teacher)
    assert teacher.endswith("       -")  # no students for the teacher: a dash, right-aligned
    assert "73.68" in teacher and "1200.0" in teacher
    assert header.index("accuracy") + len("accuracy") == teacher.index("73.68") + len("73.68")


def test_accuracy_is_reported_per_k_and_a_drop_with_more_students_is_said():
    rising = format_report(_report([0.70, 0.71, 0.72], served=False))
    assert "k=1:  70.00" in rising and "k=3:  72.00" in rising
    assert "do not help" not in rising
    falling = format_report(_report([0.72, 0.70, 0.69], served=False))
    assert "more students do not help: k=1 scores best" in falling
    assert "served under" not in falling
