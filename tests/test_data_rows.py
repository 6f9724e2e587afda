"""grpo.data.rows: every source kind loads, and every bad row is reported with its file and line."""
import json

import pytest

from grpo.data.rows import MAX_REPORTED, DataError, check_row, load_rows

SCHEMA = {"question": str, "answer": str}


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_data_error_is_a_value_error():
    assert issubclass(DataError, ValueError)


def test_jsonl_rows_load_in_order_with_extra_keys_kept_and_blank_lines_skipped(tmp_path):
    f = write_lines(tmp_path / "d.jsonl", ['{"question": "q1", "answer": "a1", "extra": 3}', "", "  ",
                                           '{"question": "q2", "answer": "a2"}'])
    rows = load_rows(f, required=SCHEMA)
    assert rows == [{"question": "q1", "answer": "a1", "extra": 3}, {"question": "q2", "answer": "a2"}]


@pytest.mark.parametrize("line, message", [
    ('{"question": "q", "answer": ', "invalid JSON"),
    ('{"question": "q"}', "missing key 'answer'"),
    ('{"question": "q", "answer": 7}', "key 'answer' must be str, got int"),
    ('["q", "a"]', "expected a JSON object, got list"),
])
def test_a_bad_row_is_reported_with_file_and_line_number(tmp_path, line, message):
    f = write_lines(tmp_path / "bad.jsonl", ['{"question": "q", "answer": "a"}', "", line])
    with pytest.raises(DataError) as e:
        load_rows(f, required=SCHEMA)
    assert f"{f}:3: {message}" in str(e.value)  # line 3 counts the blank line, as an editor does


def test_all_bad_rows_are_reported_at_once_and_the_list_is_capped(tmp_path):
    n_bad = MAX_REPORTED + 3
    f = write_lines(tmp_path / "bad.jsonl", ['{"question": "q"}'] * n_bad)
    with pytest.raises(DataError) as e:
        load_rows(f, required=SCHEMA)
    msg = str(e.value)
    assert msg.startswith(f"{n_bad} bad row(s) in {f}")
    assert f"{f}:1:" in msg and f"{f}:{MAX_REPORTED}:" in msg and f"{f}:{MAX_REPORTED + 1}:" not in msg
    assert "... and 3 more" in msg


def test_bool_is_not_accepted_as_int_and_null_optional_keys_are_allowed():
    with pytest.raises(DataError, match="key 'n' must be int, got bool"):
        check_row({"n": True}, "x:1", required={"n": int})
    assert check_row({"n": 1, "opt": None}, "x:1", required={"n": int}, optional={"opt": str})["opt"] is None
    with pytest.raises(DataError, match="x:1: key 'opt' must be str or null, got int"):
        check_row({"n": 1, "opt": 2}, "x:1", required={"n": int}, optional={"opt": str})


def test_limit_stops_reading_so_bad_rows_after_it_are_not_seen(tmp_path):
    f = write_lines(tmp_path / "d.jsonl", ['{"question": "q", "answer": "a"}'] * 3 + ["not json"])
    assert len(load_rows(f, required=SCHEMA, limit=2)) == 2
    assert load_rows(f, required=SCHEMA, limit=0) == []
    with pytest.raises(DataError, match=":4: invalid JSON"):
        load_rows(f, required=SCHEMA)


def test_parse_errors_are_reported_at_the_row_location(tmp_path):
    f = write_lines(tmp_path / "d.jsonl", ['{"question": "q", "answer": "a"}', '{"question": "", "answer": "a"}'])

    def parse(row):
        if not row["question"]:
            raise ValueError("empty question")
        return {**row, "ok": True}

    with pytest.raises(DataError, match=f"{f}:2: empty question"):
        load_rows(f, required=SCHEMA, parse=parse)


def test_json_array_file_and_its_errors_name_the_array_index(tmp_path):
    f = tmp_path / "d.json"
    f.write_text(json.dumps([{"question": "q", "answer": "a"}, {"question": "q"}]))
    with pytest.raises(DataError, match=r"d\.json\[1\]: missing key 'answer'"):
        load_rows(f, required=SCHEMA)
    f.write_text(json.dumps([{"question": "q", "answer": "a"}]))
    assert load_rows(f, required=SCHEMA) == [{"question": "q", "answer": "a"}]
    f.write_text('{"question": "q"}')
    with pytest.raises(DataError, match="expected a JSON array"):
        load_rows(f, required=SCHEMA)


def test_a_directory_source_reads_the_split_file(tmp_path):
    write_lines(tmp_path / "train.jsonl", ['{"question": "t", "answer": "a"}'])
    write_lines(tmp_path / "test.jsonl", ['{"question": "s", "answer": "a"}'])
    assert load_rows(tmp_path, split="test", required=SCHEMA)[0]["question"] == "s"
    with pytest.raises(DataError, match="no validation.jsonl or validation.json .*found: test.jsonl, train.jsonl"):
        load_rows(tmp_path, split="validation", required=SCHEMA)


@pytest.mark.parametrize("source", ["./missing.jsonl", "missing.json", "/no/such/dir"])
def test_a_missing_local_path_is_a_clear_error_not_a_hub_lookup(monkeypatch, source):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("hub was called"))
    with pytest.raises(DataError, match="no such file or directory"):
        load_rows(source, required=SCHEMA)


def test_a_hub_id_goes_through_datasets_load_dataset_with_config_and_split(monkeypatch):
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake_load_dataset(path, name=None, split=None):
        calls.append((path, name, split))
        return [{"question": "q0", "answer": "a0"}, {"question": "q1"}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    with pytest.raises(DataError, match=r"owner/name\[test\]\[1\]: missing key 'answer'"):
        load_rows("owner/name", split="test", config="cfg", required=SCHEMA)
    assert calls == [("owner/name", "cfg", "test")]


def test_a_failing_hub_load_becomes_a_data_error_that_suggests_a_local_file(monkeypatch):
    datasets = pytest.importorskip("datasets")

    def offline(*args, **kwargs):
        raise ConnectionError("no internet")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match="could not load hub dataset 'owner/name'.*no internet.*local"):
        load_rows("owner/name", required=SCHEMA)


def test_an_integer_too_long_for_python_is_a_data_error_naming_the_line(tmp_path):
    """json.loads raises a plain ValueError (not JSONDecodeError) on integers over 4,300 digits."""
    f = tmp_path / "rows.jsonl"
    f.write_text('{"question": "q", "answer": "1"}\n{"question": "q", "answer": ' + "9" * 5000 + "}\n")
    with pytest.raises(DataError, match=r"rows.jsonl:2"):
        load_rows(str(f), required=SCHEMA)
