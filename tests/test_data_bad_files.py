"""Bad data files (issue #14 item 8): empty, blank-only, Latin-1 and UTF-16 files are DataErrors naming the
file and line (they were IndexError / UnicodeDecodeError), for JSONL, JSON and the score-model CSV."""
import json
import re

import pytest

from grpo.data import load_gsm8k
from grpo.data.rows import DataError, iter_items, load_rows
from grpo.data.score_model import load_score_rows

SCHEMA = {"question": str, "answer": str}
GOOD = '{"question": "q", "answer": "1 + 1 = 2\\n#### 2"}'


@pytest.mark.parametrize("content, message", [
    (b"", "no rows: the file is empty"),
    (b"\n  \n\t\n", "no rows: all 3 line(s) of the file are blank"),
])
def test_an_empty_or_blank_only_jsonl_file_is_an_error_naming_the_file(tmp_path, content, message):
    f = tmp_path / "train.jsonl"
    f.write_bytes(content)
    for source in (f, tmp_path):  # the file itself, and the directory that holds train.jsonl
        with pytest.raises(DataError, match=f"^{re.escape(f'{f}: {message}')}$"):
            load_gsm8k(source)


def test_an_empty_json_array_is_an_error_naming_the_file(tmp_path):
    f = tmp_path / "d.json"
    f.write_text("[]")
    with pytest.raises(DataError, match=f"^{f}: no rows: the JSON array is empty$"):
        load_rows(f, required=SCHEMA)


def test_an_empty_hub_split_is_an_error_naming_it(monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: [])
    with pytest.raises(DataError, match=r"owner/name\[test\]: no rows: the split is empty"):
        load_rows("owner/name", split="test", required=SCHEMA)


def test_limit_zero_still_reads_nothing_from_a_good_file(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text(GOOD + "\n")
    assert load_rows(f, required=SCHEMA, limit=0) == []


def test_latin1_lines_are_bad_rows_at_their_line_with_the_byte_and_a_fix(tmp_path):
    f = tmp_path / "d.jsonl"
    lines = [GOOD, '{"question": "Caf\u00e9?", "answer": "x\\n#### 1"}', GOOD, '{"question": "\u00bd", "answer": "#### 1"}']
    f.write_bytes("\n".join(lines).encode("latin-1") + b"\n")
    with pytest.raises(DataError) as e:
        load_gsm8k(f)
    msg = str(e.value)
    # line 2: '{"question": "Caf' is 17 bytes, so é (0xe9) is byte 18; line 4: ½ (0xbd) is byte 15
    assert f"{f}:2: not UTF-8 (byte 0xe9 at byte 18 of the line" in msg
    assert f"{f}:4: not UTF-8 (byte 0xbd at byte 15 of the line" in msg
    assert msg.startswith(f"2 bad row(s) in {f}") and "iconv -f latin1 -t UTF-8" in msg


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32"])
def test_a_utf16_or_utf32_jsonl_file_is_one_error_naming_the_file_and_how_to_convert(tmp_path, encoding):
    f = tmp_path / "d.jsonl"
    f.write_bytes((GOOD + "\n" + GOOD + "\n").encode(encoding))  # "utf-16"/"utf-32" write a byte-order mark
    with pytest.raises(DataError, match=f"^{f}:1: the file is UTF-16 or UTF-32 text, not UTF-8; convert it"):
        load_gsm8k(f)


def test_a_utf8_byte_order_mark_is_accepted(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_bytes(b"\xef\xbb\xbf" + (GOOD + "\n" + GOOD + "\n").encode())
    assert [r["gold"] for r in load_gsm8k(f)] == ["2", "2"]
    j = tmp_path / "d.json"
    j.write_bytes(b"\xef\xbb\xbf" + json.dumps([json.loads(GOOD)]).encode())
    assert load_rows(j, required=SCHEMA)[0]["question"] == "q"


def test_a_latin1_json_file_names_the_line_of_the_bad_byte(tmp_path):
    f = tmp_path / "d.json"
    f.write_bytes('[\n  {"question": "q", "answer": "a"},\n  {"question": "na\u00efve", "answer": "a"}\n]'.encode("latin-1"))
    with pytest.raises(DataError, match=f"^{f}:3: not UTF-8 \\(byte 0xef at byte 19 of the line"):
        load_rows(f, required=SCHEMA)
    f.write_bytes(json.dumps([json.loads(GOOD)]).encode("utf-16"))
    with pytest.raises(DataError, match=f"^{f}:1: the file is UTF-16 or UTF-32"):
        load_rows(f, required=SCHEMA)


def test_iter_items_yields_a_latin1_line_as_a_data_error_so_cleansing_can_count_it(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_bytes(GOOD.encode() + b"\n" + '{"question": "\u00e9"}'.encode("latin-1") + b"\n")
    items = list(iter_items(f))
    assert isinstance(items[0][1], dict) and items[1][0] == f"{f}:2" and isinstance(items[1][1], DataError)


def _csv(path, text: str, encoding="utf-8"):
    path.write_bytes(text.encode(encoding))
    return path


def test_score_model_csv_empty_header_only_latin1_and_utf16_are_errors_naming_file_and_line(tmp_path):
    header = "sql,reasoning,predicted_nl,target\n"
    with pytest.raises(DataError, match="no rows: the file is empty"):
        load_score_rows(_csv(tmp_path / "a.csv", ""))
    with pytest.raises(DataError, match="no rows: the file has a header line and no records"):
        load_score_rows(_csv(tmp_path / "b.csv", header))
    # the bad byte is on line 4; a text-mode reader decodes 8 KB chunks, so it named the wrong line
    f = _csv(tmp_path / "c.csv", header + "SELECT 1,r,q,0.5\nSELECT 2,r,q,0.5\nSELECT 3,caf\u00e9,q,0.5\n", "latin-1")
    with pytest.raises(DataError, match=f"^{f}:4: not UTF-8 \\(byte 0xe9 at byte 13 of the line"):
        load_score_rows(f)
    f = _csv(tmp_path / "d.csv", header + "SELECT 1,r,q,0.5\n", "utf-16")
    with pytest.raises(DataError, match=f"^{f}:1: the file is UTF-16 or UTF-32"):
        load_score_rows(f)
    assert load_score_rows(_csv(tmp_path / "e.csv", header + "SELECT 1,r,q,0.5\n"))[0]["target"] == 0.5


def test_a_2_mb_question_loads_quickly_as_one_row(tmp_path):
    # the loader is not where a 2 MB line hung (the prompt length is: test_data_prompts.py)
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps({"question": "Why? " * 400_000, "answer": "#### 1"}) + "\n")
    (row,) = load_gsm8k(f)
    assert len(row["question"]) == 2_000_000
