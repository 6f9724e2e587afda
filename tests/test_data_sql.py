"""grpo.data.text_to_sql: the bundled hand-written set runs in plain sqlite3; loader errors; prompts."""
import sqlite3

import pytest

from grpo.data import DataError, load_text_to_sql, to_sql_prompts

BUNDLED = load_text_to_sql("bundled", split="train") + load_text_to_sql("bundled", split="test")


def test_the_bundled_set_has_enough_rows_and_disjoint_splits():
    train, test = load_text_to_sql("bundled", split="train"), load_text_to_sql("bundled", split="test")
    assert len(train) + len(test) >= 40 and len(test) >= 10
    assert not {r["sql_prompt"] for r in train} & {r["sql_prompt"] for r in test}
    assert len({r["id"] for r in BUNDLED}) == len(BUNDLED)


@pytest.mark.parametrize("row", BUNDLED, ids=lambda r: f"id{r['id']}")
def test_every_bundled_context_builds_and_every_gold_query_runs_with_a_result(row):
    con = sqlite3.connect(":memory:")
    try:
        con.executescript(row["sql_context"])
        cur = con.execute(row["sql"])
        if row["sql"].lstrip().upper().startswith(("SELECT", "WITH")):
            result = cur.fetchall()
            assert result, "gold SELECT returned no rows"
            assert any(v is not None for r in result for v in r), "gold SELECT returned only NULLs"
        else:
            assert cur.rowcount >= 1, "gold INSERT/UPDATE/DELETE changed no row"
    finally:
        con.close()


@pytest.mark.parametrize("feature, pattern", [
    ("join", " JOIN "), ("group by", "GROUP BY"), ("having", "HAVING"), ("subquery", "(SELECT"),
    ("order by + limit", "LIMIT"), ("cte", "WITH "), ("window", " OVER ("), ("union", "UNION"),
    ("insert", "INSERT INTO"), ("update", "UPDATE "), ("delete", "DELETE FROM"), ("case", "CASE WHEN"),
])
def test_the_bundled_set_covers_each_sql_feature(feature, pattern):
    assert any(pattern in r["sql"] for r in BUNDLED), feature


def test_the_bundled_set_spans_domains_and_complexities():
    assert len({r["domain"] for r in BUNDLED}) >= 8
    assert len({r["sql_complexity"] for r in BUNDLED}) >= 6


def test_bad_rows_are_reported_with_their_line(tmp_path):
    f = tmp_path / "rows.jsonl"
    f.write_text('{"sql_prompt": "q", "sql_context": "CREATE TABLE t (a INT);", "sql": "SELECT a FROM t;"}\n'
                 '{"sql_prompt": "q", "sql_context": "CREATE TABLE t (a INT);"}\n'
                 '{"sql_prompt": "q", "sql_context": "c", "sql": "s", "id": [1]}\n')
    with pytest.raises(DataError) as e:
        load_text_to_sql(f)
    assert f"{f}:2: missing key 'sql'" in str(e.value)
    assert f"{f}:3: key 'id' must be int or str or null, got list" in str(e.value)


def test_the_hub_id_is_loaded_through_datasets(monkeypatch):
    datasets = pytest.importorskip("datasets")
    calls = []
    hub_row = {"id": 5097, "domain": "forestry", "sql_complexity": "single join", "sql_prompt": "q",
               "sql_context": "CREATE TABLE t (a INT);", "sql": "SELECT a FROM t;", "sql_explanation": "e",
               "domain_description": "d", "sql_complexity_description": "c", "sql_task_type": "analytics and reporting",
               "sql_task_type_description": "t"}

    def fake_load_dataset(path, name=None, split=None):
        calls.append((path, name, split))
        return [hub_row]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert load_text_to_sql("gretelai/synthetic_text_to_sql", split="test") == [hub_row]
    assert calls == [("gretelai/synthetic_text_to_sql", None, "test")]


def test_sql_prompt_rows_hold_schema_and_question_and_keep_every_column():
    row = load_text_to_sql("bundled", limit=1)[0]
    (p,) = to_sql_prompts([row])
    system, user = p["prompt"]
    for tag in ("<reasoning>", "</reasoning>", "<sql>", "</sql>"):
        assert tag in system["content"]
    assert user["role"] == "user"
    assert row["sql_context"] in user["content"] and user["content"].endswith(row["sql_prompt"])
    assert {k: p[k] for k in row} == row and p["prompt_suffix"] == ""
