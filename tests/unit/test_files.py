import json

import pytest

from shoal.files import write_json_atomic


def test_a_json_file_is_replaced_whole_and_leaves_no_temporary(tmp_path):
    file = tmp_path / "state.json"
    write_json_atomic(file, {"batches": 1})
    write_json_atomic(file, {"batches": 2}, indent=1)
    assert json.loads(file.read_text()) == {"batches": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_value_that_cannot_be_written_keeps_the_previous_file(tmp_path):
    file = tmp_path / "state.json"
    write_json_atomic(file, {"batches": 1})
    with pytest.raises(TypeError):
        write_json_atomic(file, {"batches": object()})
    assert json.loads(file.read_text()) == {"batches": 1}
