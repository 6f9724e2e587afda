"""System C (text-to-SQL): cleanse_sql_dataset → train_grpo → eval_sql end to end on tiny-llama, with the
optional judge answered by a local OpenAI-compatible stub server; drop reasons; one-line errors."""
import json
import math
import runpy
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from grpo.data import load_text_to_sql
from pipeline_helpers import ROOT, model_cache, run_bad_input, run_in_process, run_subprocess, script_env

CONFIG = str(ROOT / "configs" / "text_to_sql.json")
JUDGE_REPLY = {"sql_score": 2, "reasoning_score": 3, "format_score": 1, "educational_score": 4,
               "error_type": "syntax", "explanation": "The answer has no SQL."}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return script_env(tmp_path_factory.mktemp("sql"), model_cache(tmp_path_factory)) | {"JUDGE_TEST_KEY": "sk-test-123"}


@pytest.fixture()
def judge():
    """A stub OpenAI-compatible chat endpoint on 127.0.0.1: records requests, answers `reply["content"]`."""
    seen, reply = [], {"content": "Here is my grade:\n" + json.dumps(JUDGE_REPLY)}  # prose around the JSON is fine

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
            data = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply["content"]}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", seen, reply
    server.shutdown()
    server.server_close()


def mixed_rows(path: Path) -> Path:
    """Three good bundled rows and one row per drop reason."""
    good = load_text_to_sql("bundled", split="test")[:3]
    bad = [
        {"sql_prompt": "q", "sql_context": "CREATE TABLE t (a INT) ENGINE=InnoDB;", "sql": "SELECT a FROM t;"},
        {"sql_prompt": "q", "sql_context": "ATTACH DATABASE 'x.db' AS x;", "sql": "SELECT 1;"},
        {"sql_prompt": "q", "sql_context": "CREATE TABLE t (a INT);", "sql": "SELECT b FROM t;"},
        {"sql_prompt": "q", "sql_context": "CREATE TABLE t (a INT);",
         "sql": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT max(x) FROM c;"},
        {"sql_prompt": "q", "sql_context": "CREATE TABLE t (a INT);", "sql": "SELECT a FROM t; DROP TABLE t;"},
        {"sql_prompt": "q", "sql": "SELECT 1;"},
    ]
    lines = [json.dumps(r) for r in good[:2] + bad[:3]] + ["{not json"] + [json.dumps(r) for r in bad[3:] + good[2:]]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_cleanse_then_train_then_evaluate_with_a_judge(env, tmp_path, judge, monkeypatch, capsys):
    out = Path(env["GRPO_OUTPUT_ROOT"])
    p = run_in_process("cleanse_sql_dataset.py", "--config", CONFIG, "--dataset", mixed_rows(tmp_path / "raw.jsonl"),
                       "--time-limit-s", 0.2, env=env, monkeypatch=monkeypatch, capsys=capsys)
    clean = out / "data" / "sql_clean.jsonl"  # the config's output file
    kept = [json.loads(line) for line in clean.read_text().splitlines()]
    assert len(kept) == 3 and all(r["id"] for r in kept)  # optional columns are kept
    report = json.loads(clean.with_suffix(".report.json").read_text())
    assert (report["rows_read"], report["kept"], report["dropped"]) == (10, 3, 7)
    assert report["dropped_by_reason"] == {"malformed": 2, "context_error": 1, "context_refused": 1, "gold_error": 1,
                                           "gold_refused": 2, "gold_empty": 0, "duplicate": 0}
    assert "kept 3, dropped 7" in p.out and "raw.jsonl:5: no such column: b" in p.out

    run_subprocess("train_grpo.py", "--config", CONFIG, "--model", "tiny-llama", "--dataset", clean, "--max-steps", 1,
        "--num-generations", 2, "--max-completion-length", 8, env=env)
    run_dir = out / "text_to_sql_grpo"
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["task"], config["lora_r"], config["lora_alpha"], config["beta"]) == ("text_to_sql", 32, 32, 0.1)
    metrics = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert all(math.isfinite(metrics[k]) for k in ("reward", "loss", "kl", "grad_norm"))
    assert set(config["reward_funcs"]) == {"sql_format", "sql_execution", "sql_complexity", "sql_reasoning_quality"}

    url, seen, _ = judge
    p = run_in_process("eval_sql.py", "--config", CONFIG, "--model-path", "text_to_sql_grpo", "--dataset", clean,
                       "--max-new-tokens", 8, "--judge-url", url, "--judge-model", "stub-judge",
                       "--judge-api-key-env", "JUDGE_TEST_KEY", env=env, monkeypatch=monkeypatch, capsys=capsys)
    summary = json.loads((out / "eval" / "sql_eval.json").read_text())
    assert summary["num_examples"] == 3 and summary["num_ungraded"] == 0
    for key in ("execution_accuracy", "valid_sql_rate", "format_rate", "reward_total"):
        assert math.isfinite(summary[key]) and 0.0 <= summary[key] <= 3.5
    assert summary["judge/sql_score"] == 2.0 and summary["judge/educational_score"] == 4.0
    assert summary["judge/error_types"] == {"syntax": 3} and summary["judge/failures"] == 0
    assert len(seen) == 3 and seen[0]["path"] == "/v1/chat/completions" and seen[0]["auth"] == "Bearer sk-test-123"
    assert seen[0]["body"]["model"] == "stub-judge" and kept[0]["sql"] in seen[0]["body"]["messages"][0]["content"]
    rows = [json.loads(line) for line in (out / "eval" / "sql_eval.jsonl").read_text().splitlines()]
    assert [r["gold_sql"] for r in rows] == [r["sql"] for r in kept] and rows[0]["judge_error_type"] == "syntax"
    assert (out / "eval" / "sql_eval.csv").read_text().startswith("id,sql_prompt,gold_sql,generated_text")
    assert "execution_accuracy" in p.out

    # The recipe's prompt settings: the priming text is part of the scored reply, as in training.
    primed = "<reasoning>\nAll rows.\n</reasoning>\n<sql>\nSELECT 1;\n</sql>"
    run_in_process("eval_sql.py", "--config", CONFIG, "--model-path", "text_to_sql_grpo", "--dataset", clean,
                   "--max-new-tokens", 2, "--prompt-suffix", primed, "--system-prompt", "Write SQL.",
                   "--output-file", "primed.csv", env=env, monkeypatch=monkeypatch, capsys=capsys)
    rows = [json.loads(line) for line in (out / "eval" / "primed.jsonl").read_text().splitlines()]
    assert all(r["generated_text"].startswith(primed) and r["extracted_sql"] == "SELECT 1;" for r in rows)
    assert json.loads((out / "eval" / "primed.json").read_text())["valid_sql_rate"] == 1.0


@pytest.mark.parametrize("content, expected", [
    ('{"sql_score": "4", "reasoning_score": 5, "format_score": 3, "educational_score": 2, "error_type": "JOIN"}',
     {"judge_sql_score": 4.0, "judge_error_type": "join", "judge_error": ""}),
    ('{"sql_score": 9, "reasoning_score": 5, "format_score": 3, "educational_score": 2}', {"judge_sql_score": None}),
    ("I think it is fine.", {"judge_sql_score": None}),
    ('{"sql_score": true, "reasoning_score": 5, "format_score": 3, "educational_score": 2}', {"judge_sql_score": None}),
    ('{"sql_score": 1, "reasoning_score": 1, "format_score": 1, "educational_score": 1, "error_type": "odd"}',
     {"judge_error_type": "other", "judge_error": ""}),
])
def test_judge_replies_are_parsed_or_recorded_as_unusable(judge, content, expected):
    url, seen, reply = judge
    reply["content"] = content
    ev = runpy.run_path(str(ROOT / "scripts" / "eval_sql.py"))  # globals only; main() not run
    s = ev["EvalSqlSettings"](judge_url=url + "/chat/completions/", judge_api_key_env="NO_SUCH_VARIABLE_SET")
    row = {"sql_context": "CREATE TABLE t (a INT);", "sql_prompt": "q?", "sql": "SELECT a FROM t"}
    record = {"execution_match": False, "sql_error": "no such column: b", "generated_text": "SELECT b FROM t"}
    out = ev["ask_judge"](s, row, record)
    assert {k: out[k] for k in expected} == expected
    assert (out["judge_error"] != "") == (expected.get("judge_sql_score", 1) is None)
    assert seen[-1]["path"] == "/v1/chat/completions" and seen[-1]["auth"] is None  # no key, no header
    assert "fails: no such column: b" in seen[-1]["body"]["messages"][0]["content"]


def test_the_bundled_set_is_kept_whole():
    cleanse = runpy.run_path(str(ROOT / "scripts" / "cleanse_sql_dataset.py"))  # globals only; main() not run
    s = cleanse["CleanseSettings"]()
    for split in ("train", "test"):
        assert all(cleanse["check"](row, s) == (None, "") for row in load_text_to_sql("bundled", split=split))


@pytest.mark.parametrize("script, args, message", [
    ("cleanse_sql_dataset.py", ["--dataset", "missing.jsonl"], "no such file"),
    ("cleanse_sql_dataset.py", ["--split", "dev"], "no bundled text-to-SQL split 'dev'"),
    ("eval_sql.py", ["--model", "tiny-llama", "--dataset", "missing.jsonl"], "no such file"),
    ("eval_sql.py", ["--model", "tiny-llama", "--judge-url", "http://127.0.0.1:9/v1"], "unreachable"),
    ("eval_sql.py", ["--model", "tiny-llama", "--judge-url", "ftp://x/v1"], "http(s) URL"),
])
def test_bad_input_is_one_line_error_and_nonzero_exit(script, args, message, monkeypatch, capsys, tmp_path):
    # In-process (runpy): spares a Python + torch start per case.
    assert message in run_bad_input(script, *args, tmp_path=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
