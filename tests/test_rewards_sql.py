"""Text-to-SQL rewards (REWARDS.md C): one test per docstring-table row, with the arithmetic written out."""
import math

import pytest

from rewards import sql, sql_text

DOGS = "\n".join(
    ["CREATE TABLE owners (owner_id INTEGER PRIMARY KEY, name TEXT);",
     "CREATE TABLE dogs (dog_id INTEGER PRIMARY KEY, name TEXT, age INTEGER, owner_id INTEGER);",
     "INSERT INTO owners VALUES (1, 'Ann'), (2, 'Bob');"]
    + [f"INSERT INTO dogs VALUES ({k}, 'd{k}', {k}, {1 + k % 2});" for k in range(1, 21)])
W = 1.2


def execution(gen: str, gold: str = "SELECT name FROM dogs WHERE age > 15", context: str = DOGS):
    [value] = sql.sql_execution(None, [f"<reasoning>r</reasoning><sql>{gen}</sql>"], sql=[gold], sql_context=[context])
    return value


# ------------------------------------------------------------------ sql_execution
def test_execution_gives_0_without_sql():
    assert sql.sql_execution(None, ["I do not know."], sql=["SELECT 1"], sql_context=[DOGS]) == [0.0]


@pytest.mark.parametrize("gen", [
    "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r) SELECT count(*) FROM r",
    "SELECT name FROM dogs; DELETE FROM dogs", "SELECT load_extension('x')"])
def test_execution_gives_0_not_the_type_bonus_when_the_sandbox_refuses(gen):
    assert execution(gen) == 0.0


def test_execution_gives_0_when_the_gold_or_the_context_fails():
    assert execution("SELECT name FROM dogs", gold="SELECT nope FROM dogs") == 0.0
    assert execution("SELECT 1", gold="SELECT 1", context="CREATE TABLE broken (") == 0.0


def test_execution_gives_w_for_the_same_row_set_and_column_names_in_any_order():
    assert execution("SELECT name FROM dogs WHERE age >= 16 ORDER BY age DESC") == W


def test_execution_similarity_is_the_weighted_sum_of_jaccards_count_ratio_and_recall():
    # gold: d16..d20 (5 rows, column name); gen: (name, age) of d11..d20 (10 rows)
    # rows projected on the common column "name": J = 5/10; count ratio 5/10; column J = 1/2;
    # full-row recall 0 (rows differ in width) → s = 0.4·0.5 + 0.2·0.5 + 0.25·0.5 + 0.15·0 = 0.425
    assert execution("SELECT name, age FROM dogs WHERE age > 10") == pytest.approx(W * 0.425)


def test_execution_raises_a_low_similarity_to_0_3_w_when_some_row_matches():
    # gold d1 only; gen 20 rows of (name, dog_id, age): J = 1/20, ratio 1/20, column J 1/3, recall 0
    # s = 0.02 + 0.01 + 0.0833 = 0.113 < 0.3 and one projected row matches → 0.3
    assert execution("SELECT name, dog_id, age FROM dogs", gold="SELECT name FROM dogs WHERE dog_id = 1") == \
        pytest.approx(0.3 * W)


def test_execution_gives_0_3_w_when_one_result_is_empty():
    assert execution("SELECT name FROM dogs WHERE age > 100") == pytest.approx(0.3 * W)


def test_execution_floors_any_executed_select_at_0_2_w():
    # no common column: J = 0, ratio 1/20, column J 0, recall 0 → s = 0.01 → floor 0.2
    assert execution("SELECT age FROM dogs", gold="SELECT name FROM dogs WHERE dog_id = 1") == pytest.approx(0.2 * W)


@pytest.mark.parametrize("gen, credit", [
    ("SELECT nam FROM dogs", 0.1),                                                          # no such column
    ("SELECT name FROM dogs JOIN owners ON dogs.owner_id = owners.owner_id", 0.2),           # ambiguous column
    ("SELECT name FROM dogs LIMIT 'x'", 0.15),                                              # datatype mismatch
    ("SELECT nosuchfn(name) FROM dogs", 0.05),                                              # no such function
    ("SELECT FROM WHERE", 0.1), ("SELECT * FROM cats", 0.1),             # syntax error, no such table: type bonus
])
def test_execution_gives_partial_credit_by_error_else_the_type_bonus(gen, credit):
    assert execution(gen) == pytest.approx(credit * W)


@pytest.mark.parametrize("message, credit", [("NOT NULL constraint failed: t.a", 0.1), ("constraint violation", 0.1),
                                             ("subquery returned more than 1 row", 0.1), ("disk I/O error", 0.0)])
def test_error_credit_of_messages_a_select_cannot_trigger_in_sqlite(message, credit):
    assert sql.error_credit(message) == credit


def test_execution_gives_half_w_to_any_write_that_executes():
    assert execution("UPDATE dogs SET age = 1") == pytest.approx(0.5 * W)            # gold is a SELECT
    assert execution("DELETE FROM dogs", gold="DELETE FROM dogs WHERE age < 3") == pytest.approx(0.5 * W)


def test_execution_gives_a_failing_write_only_the_type_bonus():
    assert execution("INSERT INTO dogs (nope) VALUES (1)", gold="INSERT INTO dogs (name) VALUES ('x')") == \
        pytest.approx(0.1 * W)
    assert execution("DELETE FROM cats") == 0.0


def test_execution_gives_other_statement_pairs_only_the_type_bonus():
    assert execution("CREATE TABLE y (b)", gold="CREATE TABLE x (a)") == pytest.approx(0.1 * W)
    assert execution("DROP TABLE dogs") == 0.0


def test_execution_gives_none_without_gold_and_names_a_missing_column():
    assert sql.sql_execution(None, ["<sql>SELECT 1</sql>"], sql=[None], sql_context=[DOGS]) == [None]
    with pytest.raises(ValueError, match="sql_context"):
        sql.sql_execution(None, ["<sql>SELECT 1</sql>"], sql=["SELECT 1"])


def test_execution_reads_the_gold_from_the_gold_sql_alias_and_chat_completions():
    chat = [[{"role": "assistant", "content": "<sql>SELECT name FROM dogs WHERE age > 15</sql>"}]]
    assert sql.sql_execution(None, chat, gold_sql=["SELECT name FROM dogs WHERE age > 15"], sql_context=[DOGS]) == [W]


# ------------------------------------------------------------------ execution_match / accuracy
def test_execution_match_compares_row_multisets_and_order_only_under_order_by():
    assert sql.execution_match(DOGS, "SELECT name FROM dogs WHERE age > 18",
                               "SELECT name AS n FROM dogs WHERE age IN (20, 19)")
    assert not sql.execution_match(DOGS, "SELECT name FROM dogs WHERE age > 18 ORDER BY age",
                                   "SELECT name FROM dogs WHERE age > 18 ORDER BY age DESC")
    assert not sql.execution_match(DOGS, "SELECT name FROM dogs", "SELECT name, age FROM dogs")


def test_execution_match_compares_table_states_for_writes_and_is_none_for_a_broken_gold():
    assert sql.execution_match(DOGS, "DELETE FROM dogs WHERE age < 3", "DELETE FROM dogs WHERE dog_id IN (1, 2)")
    assert not sql.execution_match(DOGS, "DELETE FROM dogs WHERE age < 3", "DELETE FROM dogs WHERE age < 4")
    assert sql.execution_match(DOGS, "SELECT nope FROM dogs", "SELECT 1") is None


TWO_ROWS = "CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER); INSERT INTO t VALUES (1, 5), (2, 6);"


@pytest.mark.parametrize("gen", [  # issue #13 item 5: each leaves main.t unchanged
    "CREATE TEMP TABLE t AS SELECT id, CASE WHEN id = 1 THEN 0 ELSE v END AS v FROM main.t",
    "CREATE TEMP VIEW t AS SELECT id, CASE WHEN id = 1 THEN 0 ELSE v END AS v FROM main.t"])
def test_execution_match_compares_the_gold_tables_not_a_temp_object_that_shadows_them(gen):
    gold = "UPDATE t SET v = 0 WHERE id = 1"
    assert sql.execution_match(TWO_ROWS, gold, gen) is False
    assert sql.sql_execution_accuracy(None, [f"<sql>{gen}</sql>"], sql=[gold], sql_context=[TWO_ROWS]) == [0.0]
    assert sql.execution_match(TWO_ROWS, gold, "UPDATE t SET v = v - 5 WHERE id < 2") is True


@pytest.mark.parametrize("gen", ["CREATE TEMP TABLE x (a)", "CREATE INDEX i ON t (v)", "CREATE VIEW w AS SELECT 1",
                                 "CREATE TABLE x (a)"])
def test_execution_match_for_a_write_also_compares_the_objects_in_main_and_temp(gen):
    gold = "DELETE FROM t WHERE id = 99"  # changes no row
    assert sql.execution_match(TWO_ROWS, gold, "DELETE FROM t WHERE v > 100") is True
    assert sql.execution_match(TWO_ROWS, gold, gen) is False


def test_execution_accuracy_reward_is_1_for_a_match_0_otherwise_none_for_a_broken_gold():
    texts = ["<sql>SELECT name FROM dogs WHERE age > 15</sql>", "<sql>SELECT 1</sql>", "nothing"]
    gold = "SELECT name FROM dogs WHERE age > 15"
    got = sql.sql_execution_accuracy(None, texts, sql=[gold] * 3, sql_context=[DOGS] * 3)
    assert got == [1.0, 0.0, 0.0]
    assert sql.sql_execution_accuracy(None, texts[:1], sql=["SELECT x FROM nowhere"], sql_context=[DOGS]) == [None]


# ------------------------------------------------------------------ complexity
def test_complexity_adds_the_weight_of_every_feature():
    q = ("SELECT a FROM t JOIN u ON x WHERE a = 1 AND b IN (SELECT c FROM v) "
         "GROUP BY a HAVING COUNT(*) > 1 ORDER BY a LIMIT 5")
    # 1 + JOIN .6 + (SELECT 1 + WHERE .2 + GROUP BY .5 + HAVING .7 + ORDER BY .3 + LIMIT .1 + COUNT( .3
    #   + in the WHERE clause: AND .15 + IN .2
    assert sql_text.complexity(q) == pytest.approx(5.05)


def test_original_complexity_misses_features_on_new_lines_and_tokenized_counts_them():
    q = "WITH a AS (SELECT 1)\nSELECT x FROM t\nJOIN u ON 1\nWHERE y = 1"
    assert sql_text.complexity(q) == pytest.approx(1.0 + 1.0)      # only "(SELECT"
    # WITH .8 + (SELECT 1 + JOIN .6 + WHERE .2
    assert sql_text.complexity_tokenized(q) == pytest.approx(1.0 + 0.8 + 1.0 + 0.6 + 0.2)


def complexity_reward(gen, gold, fn=sql.sql_complexity):
    return fn(None, [f"<sql>{gen}</sql>"] if gen else ["no sql"], sql=[gold])[0]


def test_complexity_reward_gives_0_without_sql():
    assert complexity_reward("", "SELECT a FROM t") == 0.0


def test_complexity_reward_is_0_6_exp_of_minus_half_squared_log_ratio():
    assert complexity_reward("SELECT a FROM t", "SELECT b FROM u") == pytest.approx(0.6)
    # c_gen = 1 + WHERE .2 + GROUP BY .5 + ORDER BY .3 = 2.0, c_gold = 1 → 0.6·exp(−0.5·ln²2) = 0.47186
    gen = "SELECT a FROM t WHERE x GROUP BY a ORDER BY a"
    assert complexity_reward(gen, "SELECT b FROM u") == pytest.approx(0.6 * math.exp(-0.5 * math.log(2) ** 2))
    assert complexity_reward("SELECT b FROM u", gen) == pytest.approx(0.6 * math.exp(-0.5 * math.log(0.5) ** 2))


def test_complexity_reward_without_gold_uses_the_band_1_5_to_8():
    assert complexity_reward("SELECT a FROM t WHERE x GROUP BY a ORDER BY a", None) == pytest.approx(0.24)
    assert complexity_reward("SELECT a FROM t", "") == pytest.approx(0.06)


def test_tokenized_complexity_reward_follows_the_same_table():
    tokenized = sql.sql_complexity_tokenized
    assert complexity_reward("", "SELECT b FROM u", tokenized) == 0.0
    assert complexity_reward("SELECT a\nFROM t", "SELECT b FROM u", tokenized) == pytest.approx(0.6)
    # c_gen = 1 + WHERE .2 + GROUP BY .5 + ORDER BY .3 = 2 (on new lines), c_gold = 1
    gen = "SELECT a FROM t\nWHERE x\nGROUP BY a\nORDER BY a"
    expected = 0.6 * math.exp(-0.5 * math.log(2) ** 2)
    assert complexity_reward(gen, "SELECT b FROM u", tokenized) == pytest.approx(expected)
    assert complexity_reward(gen, None, tokenized) == pytest.approx(0.24)
    assert complexity_reward("SELECT a FROM t", None, tokenized) == pytest.approx(0.06)


# ------------------------------------------------------------------ reasoning quality
def reasoning(text, context=None):
    columns = {"sql_context": [context]} if context else {}
    return sql.sql_reasoning_quality(None, [f"<reasoning>{text}</reasoning><sql>SELECT 1</sql>"], **columns)[0]


def test_reasoning_quality_is_0_without_a_reasoning_block():
    assert sql.sql_reasoning_quality(None, ["<sql>SELECT 1</sql>", "<reasoning> </reasoning>"]) == [0.0, 0.0]


@pytest.mark.parametrize("words, part", [(9, 0.0), (10, 0.10), (25, 0.15), (50, 0.20)])
def test_reasoning_quality_length_part(words, part):
    assert reasoning(" ".join(["lorem"] * words)) == pytest.approx(0.7 * part)


def test_reasoning_quality_counts_sql_terms_at_0_03_each_up_to_0_2():
    assert reasoning("table column") == pytest.approx(0.7 * 0.06)
    # 13 words → length 0.10; 11 terms → min(0.33, 0.20)
    assert reasoning("table column join select where group by order by filter aggregate schema database") == \
        pytest.approx(0.7 * (0.10 + 0.20))


@pytest.mark.parametrize("text, part", [("lorem\nipsum\ndolor", 0.15), ("lorem\n\nipsum", 0.10), ("lorem", 0.0)])
def test_reasoning_quality_line_part(text, part):
    assert reasoning(text) == pytest.approx(0.7 * part)


def test_reasoning_quality_step_part_needs_a_first_and_a_later_marker():
    assert reasoning("first lorem then") == pytest.approx(0.7 * 0.15)
    assert reasoning("first lorem") == 0.0


def test_reasoning_quality_counts_schema_names_at_0_05_each_up_to_0_3():
    assert reasoning("dogs owners", DOGS) == pytest.approx(0.7 * 0.10)
    # tables dogs, owners; columns owner_id, name, dog_id, age → 6 names → 0.30 (7+ would still be 0.30)
    assert reasoning("dogs owners owner_id name dog_id age", DOGS) == pytest.approx(0.7 * 0.30)


def test_reasoning_quality_with_every_part_at_its_maximum_is_0_7():
    text = "\n".join(["Step 1: read the dogs table and the owners table schema.", "Then join on owner_id, "
                      "select name and age, filter where age > 5, group by name and order by age."]
                     + ["lorem ipsum dolor sit amet"] * 8 + ["dog_id aggregate database column"])
    assert reasoning(text, DOGS) == pytest.approx(0.7)


# ------------------------------------------------------------------ SQL text
def test_extract_sql_takes_the_first_sql_block_in_any_case_and_blanks_comments():
    assert sql_text.extract_sql("<SQL>SELECT a -- why\nFROM t /* x */</Sql><sql>no</sql>") == "SELECT a  \nFROM t"
    assert sql_text.extract_sql("<sql>SELECT '--;' FROM t</sql>") == "SELECT '--;' FROM t"


def test_extract_sql_falls_back_to_the_first_keyword_up_to_the_first_semicolon():
    assert sql_text.extract_sql("Answer: select a from t; then more") == "select a from t;"
    assert sql_text.extract_sql("no query here") == ""


@pytest.mark.parametrize("query, kind", [
    ("select 1", "SELECT"), ("-- c\nINSERT INTO t VALUES (1)", "INSERT"),
    ("WITH x AS (SELECT 1) DELETE FROM t", "DELETE"), ("WITH x", "WITH_UNKNOWN"),
    ("CREATE VIEW v AS SELECT 1", "CREATE_VIEW"), ("CREATE UNIQUE INDEX i ON t(a)", "CREATE_OTHER"),
    ("PRAGMA x", "OTHER"), ("", "UNKNOWN"),
])
def test_statement_type_follows_the_first_word(query, kind):
    assert sql_text.statement_type(query) == kind


def test_schema_names_reads_tables_views_and_column_definitions_not_constraints():
    tables, columns = sql_text.schema_names(
        "CREATE TABLE IF NOT EXISTS `Sales` (id INT, price DECIMAL(10,2), PRIMARY KEY (id), "
        "FOREIGN KEY (id) REFERENCES x(id)); CREATE VIEW big AS SELECT 1")
    assert tables == {"sales", "big"} and columns == {"id", "price"}
