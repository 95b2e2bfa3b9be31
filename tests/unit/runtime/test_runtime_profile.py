"""Cost profiling against a fake runner: the grid, the cache key, the cache itself."""

from __future__ import annotations

import pytest

from shoal.errors import ConfigError
from shoal.serve.runtime.profile import (
    ProfileConfig,
    load_or_profile,
    machine_fingerprint,
    profile_costs,
    profile_key,
)


class FakeRunner:
    """Records the shapes it was asked to run; takes no time."""

    def __init__(self, n_students: int = 5) -> None:
        self.n_students = n_students
        self.calls: list[tuple[int, int, int]] = []

    def run(self, input_ids, attention_mask, token_type_ids, k):
        assert attention_mask.shape == input_ids.shape and attention_mask.min() == 1
        self.calls.append((k, *input_ids.shape))


def test_profile_measures_the_full_grid_with_warmup():
    fake = FakeRunner()
    model = profile_costs(fake, ks=(1, 3), batches=(1, 4), lengths=(8, 16), repeats=2)
    assert model.ks == (1, 3) and model.padded
    assert len(model.points) == 8
    assert len(fake.calls) == 8 * 3  # one warm-up and two timed runs per point
    assert model.cost(2, 2, 12) >= 0


def test_default_ks_cover_small_cohorts_fully_and_large_ones_sparsely():
    assert ProfileConfig().resolve_ks(4) == (1, 2, 3, 4)
    ks = ProfileConfig().resolve_ks(16)
    assert ks[0] == 1 and ks[-1] == 16 and len(ks) == 6
    with pytest.raises(ConfigError, match=r"outside 1..4"):
        ProfileConfig(ks=(1, 9)).resolve_ks(4)
    with pytest.raises(ConfigError, match="repeats=0"):
        ProfileConfig(repeats=0)


def test_the_key_changes_with_machine_model_and_layout():
    machine, model, layout, grid = machine_fingerprint("cpu"), {"h": 32}, {"workers": 0}, {}
    key = profile_key(machine, model, layout, grid)
    assert key == profile_key(dict(machine), {"h": 32}, {"workers": 0}, {})
    assert key != profile_key({**machine, "cpu": "other"}, model, layout, grid)
    assert key != profile_key(machine, {"h": 64}, layout, grid)
    assert key != profile_key(machine, model, {"workers": 2}, grid)


def test_cache_is_used_and_a_broken_file_is_measured_again(tmp_path):
    grid = ProfileConfig(ks=(1,), batches=(1,), lengths=(4, 600), repeats=1)
    kwargs = dict(
        model_config={"vocab_size": 30, "max_position_embeddings": 64},
        layout={"workers": 0},
        device="cpu",
        profile=grid,
        cache_dir=tmp_path,
    )
    fake = FakeRunner()
    first = load_or_profile(fake, **kwargs)
    assert {n for _, _, n, _ in first.points} == {4, 64}  # lengths capped at max positions
    assert len(fake.calls) == 4
    again = load_or_profile(fake, **kwargs)
    assert again == first and len(fake.calls) == 4  # from the cache, nothing run
    (path,) = tmp_path.glob("*.json")
    path.write_text("{not json")
    load_or_profile(fake, **kwargs)
    assert len(fake.calls) == 8
    load_or_profile(fake, **kwargs, refresh=True)
    assert len(fake.calls) == 12
