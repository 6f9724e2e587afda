"""Evaluate a model on text-to-SQL (system C, REWARDS.md C): execution accuracy, valid SQL, format; optional judge.

    python scripts/eval_sql.py --config configs/text_to_sql.json                               # base model
    python scripts/eval_sql.py --config configs/text_to_sql.json --model-path text_to_sql_grpo
    python scripts/eval_sql.py --config configs/text_to_sql.json --model-path text_to_sql_grpo \\
        --judge-url https://api.openai.com/v1 --judge-model gpt-4o-mini       # key from $OPENAI_API_KEY

`--model-path` takes a run name (text_to_sql_grpo → outputs/text_to_sql_grpo/final), a folder, a named
model or a hub id; without it the base `model` is evaluated. Rows: the bundled test split, a gretel-format
JSONL (cleansed by scripts/cleanse_sql_dataset.py) or a hub id. Config files: flat, or sectioned (this
script reads `common` then `eval_sql`). The judge is off unless `--judge-url` names an OpenAI-compatible
endpoint (a base URL such as http://127.0.0.1:8000/v1, or its full /chat/completions URL; vLLM, llama.cpp
server, Ollama and OpenAI all qualify); its API key is read from the variable named by `judge_api_key_env`.

Steps:
    1. settings; the rows as system C prompts (`system_prompt` / `prompt_suffix` as in training); with a judge, a connection check (fail before the model)
    2. load the model to evaluate (eval mode, no new adapter)
    3. one completion per prompt, in batches (greedy by default)
    4. per example: extract the SQL (rewards.sql_text.extract_sql), run it in the sandbox on a fresh
       database, compare it with the gold (rewards.sql.execution_match), score C's four rewards
    5. optional judge: one chat request per example, scores parsed from the JSON object in its reply
       (an unusable reply is recorded in judge_error; HTTP 400/401/403/404 stops the run: a wrong
       URL, model name or key would fail every request)
    6. write the per-example CSV and JSONL and the summary JSON (each atomically); print the metrics

Metrics (printed, and in the summary JSON):
    execution_accuracy      fraction of graded examples whose SQL does what the gold does: same rows
                            (in order when the gold has ORDER BY) and column count, or the same tables
                            after a write; examples whose gold fails are not graded (num_ungraded)
    valid_sql_rate          fraction whose extracted SQL executes without error in the sandbox
    format_rate             fraction with `<reasoning>…</reasoning>` then `<sql>…</sql>` (C's format reward)
    strict_format_rate      fraction that is exactly that layout and nothing else (sql_format_strict)
    reward/<name>, reward_total   mean of C's rewards (format ×1.0, execution ×1.2, complexity ×0.6,
                            reasoning ×0.7) and of their sum (max 3.5)
    judge/<score>           mean judge score 1–5: sql, reasoning, format, educational (with a judge)
    judge/error_types       count per error type named by the judge; judge/failures: unusable replies
    mean_completion_tokens, truncated_fraction, seconds

Outputs: `output_file` (CSV; a bare name goes to outputs/eval/) and the same rows as .jsonl; summary .json.
`generated_text` is the whole reply: `prompt_suffix` (the priming text, e.g. "<reasoning>\n") + the generated text.
Columns: id, sql_prompt, gold_sql, generated_text, extracted_sql, format_ok, valid_sql, execution_match,
sql_error, reward/<name> …, reward_total, and with a judge judge_sql_score, judge_reasoning_score,
judge_format_score, judge_educational_score, judge_error_type, judge_explanation, judge_error.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grpo.config import UserError, above, at_least, cli_main, parse_settings, path_name  # noqa: E402
from grpo.generate import GenerationSettings  # noqa: E402
from grpo.models import ModelSettings, load_model_from_settings  # noqa: E402
from grpo.settings import PromptSettings  # noqa: E402
from grpo.run import atomic_path, atomic_write_json, atomic_write_text, output_file, seed_everything  # noqa: E402
import rewards  # noqa: E402
from rewards.sql import execution_match  # noqa: E402
from rewards.sql_sandbox import run_sql  # noqa: E402
from rewards.sql_text import extract_sql  # noqa: E402

REWARDS = rewards.PRESETS["text_to_sql"]
JUDGE_SCORES = ("sql_score", "reasoning_score", "format_score", "educational_score")
ERROR_TYPES = ("none", "syntax", "schema", "logic", "aggregation", "join", "filter", "format", "incomplete", "other")
JUDGE_PROMPT = """You grade a model's answer to a text-to-SQL task.

Database statements:
{context}

Question: {question}
Reference SQL: {gold}

Model answer:
{answer}

Automatic check: the model's SQL {check}.

Score each from 1 (poor) to 5 (excellent):
- sql_score: does the SQL answer the question correctly?
- reasoning_score: is the reasoning correct and about the right tables, columns and conditions?
- format_score: does the answer follow <reasoning>...</reasoning> then <sql>...</sql>?
- educational_score: would the explanation teach a learner how to write this query?
Name the main error_type, one of: {error_types}.
Reply with only a JSON object:
{{"sql_score": 1, "reasoning_score": 1, "format_score": 1, "educational_score": 1,
 "error_type": "none", "explanation": "one sentence"}}"""


@dataclass
class EvalSqlSettings(GenerationSettings, PromptSettings, ModelSettings):
    model_path: str | None = None
    """model to evaluate: a run name (text_to_sql_grpo), folder, named model or hub id; default: `model`"""
    dataset: str = "bundled"
    """text-to-SQL rows: bundled, a gretel-format .jsonl/.json file or folder, or a hub id"""
    split: str = "test"
    """split to evaluate"""
    num_examples: int | None = None
    """evaluate the first N rows; null = all"""
    output_file: str = "sql_eval.csv"
    """per-example CSV; a bare name goes to outputs/eval/; .jsonl and .json summary beside it"""
    judge_url: str | None = None
    """OpenAI-compatible endpoint of an LLM judge (e.g. http://127.0.0.1:8000/v1); null = no judge"""
    judge_model: str = "gpt-4o-mini"
    """model name sent to the judge endpoint"""
    judge_api_key_env: str = "OPENAI_API_KEY"
    """environment variable holding the judge's API key (none sent when unset)"""
    judge_timeout_s: float = 60.0
    """seconds to wait for one judge reply"""
    # GenerationSettings with this script's defaults
    max_new_tokens: int = 300
    """most tokens generated per completion"""

    def validate(self) -> None:
        """Ranges, checked before anything loads (grpo.config [D9]; the base classes check their own)."""
        at_least(self, "num_examples", 1, why="null = all")
        path_name(self, "output_file", kind="file")
        above(self, "judge_timeout_s", 0)


# ------------------------------------------------------------------------------------- judge
def chat_url(url: str) -> str:
    """A base URL (…/v1) or a full …/chat/completions URL → the chat completions URL."""
    url = url.rstrip("/")
    return url if url.endswith("/chat/completions") else url + "/chat/completions"


def check_reachable(url: str, timeout_s: float = 5.0) -> None:
    """Open (and close) a TCP connection to the judge's host, or raise a one-line UserError."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(f"--judge-url must be an http(s) URL such as http://127.0.0.1:8000/v1, got {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout_s).close()
    except OSError as e:
        raise UserError(f"judge endpoint {url} is unreachable ({e.strerror or e}); "
                        f"start it or drop --judge-url") from None


def ask_judge(s: EvalSqlSettings, row: dict, record: dict) -> dict:
    """One judge request; returns the judge_* columns (judge_error set when the reply is unusable)."""
    match, error = record["execution_match"], record["sql_error"]
    check = ("matches the reference result" if match else "could not be checked (the reference fails)"
             if match is None else f"fails: {error}" if error else "runs but gives a different result")
    prompt = JUDGE_PROMPT.format(context=row["sql_context"], question=row["sql_prompt"], gold=row["sql"],
                                 answer=record["generated_text"], check=check, error_types=", ".join(ERROR_TYPES))
    body = json.dumps({"model": s.judge_model, "temperature": 0,
                       "messages": [{"role": "user", "content": prompt}]}).encode()
    headers = {"Content-Type": "application/json"}
    if os.environ.get(s.judge_api_key_env):
        headers["Authorization"] = f"Bearer {os.environ[s.judge_api_key_env]}"
    request = urllib.request.Request(chat_url(s.judge_url), data=body, headers=headers, method="POST")
    out = {f"judge_{k}": None for k in JUDGE_SCORES} | {"judge_error_type": "", "judge_explanation": "",
                                                        "judge_error": ""}
    try:
        with urllib.request.urlopen(request, timeout=s.judge_timeout_s) as response:
            content = json.loads(response.read().decode("utf-8"))["choices"][0]["message"]["content"]
    except urllib.error.HTTPError as e:
        if e.code in (400, 401, 403, 404):  # a wrong URL, model or key: every request would fail the same way
            raise UserError(f"judge endpoint {chat_url(s.judge_url)} answered HTTP {e.code} {e.reason}") from None
        return out | {"judge_error": f"HTTP {e.code} {e.reason}"}
    except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError, TypeError) as e:
        return out | {"judge_error": f"{type(e).__name__}: {e}"[:200]}
    try:
        start, end = content.index("{"), content.rindex("}") + 1
        reply = json.loads(content[start:end])
        scores = {k: float(reply[k]) for k in JUDGE_SCORES}  # "4" and 4 alike; True is not a score
        if any(isinstance(reply[k], bool) for k in JUDGE_SCORES) or not all(1 <= v <= 5 for v in scores.values()):
            raise ValueError(f"scores must be numbers in 1..5, got {[reply[k] for k in JUDGE_SCORES]}")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        return out | {"judge_error": f"unusable reply ({e}): {str(content)[:120]}"}
    error_type = str(reply.get("error_type", "other")).strip().lower()
    return out | {f"judge_{k}": float(v) for k, v in scores.items()} | {
        "judge_error_type": error_type if error_type in ERROR_TYPES else "other",
        "judge_explanation": str(reply.get("explanation", ""))[:500]}


# ------------------------------------------------------------------------------------- main
def main() -> None:
    # 1. settings, rows, judge connection
    s = parse_settings(EvalSqlSettings, section="eval_sql", description=__doc__)
    csv_path = output_file(s.output_file, "eval")
    rows = s.task_rows("text_to_sql", source=s.dataset, split=s.split, limit=s.num_examples)
    if not rows:
        raise UserError(f"{s.dataset} [{s.split}] has no rows")
    if s.judge_url:
        check_reachable(s.judge_url)
    seed_everything(s.seed)

    # 2.-3. model, generation
    model, tok = load_model_from_settings(s, trainable=False, model=s.model_path)
    t0 = time.perf_counter()
    suffix = rows[0].get("prompt_suffix", "")  # one suffix for all rows (PromptSettings)
    gen = s.generate(model, tok, [r["prompt"] for r in rows], prompt_suffix=suffix, desc="sql")
    seconds = time.perf_counter() - t0
    replies = [suffix + text for text in gen.texts]  # what the rewards score: the whole reply (grpo.tasks [D2])

    # 4. execution, format and rewards
    columns = {"sql": [r["sql"] for r in rows], "sql_context": [r["sql_context"] for r in rows]}
    scores = {name: rewards.get(name)(None, replies, **columns) for name in REWARDS}
    strict = rewards.get("sql_format_strict")(None, replies)
    records = []
    for i, (row, text) in enumerate(zip(rows, replies)):
        sql = extract_sql(text)
        result = run_sql(row["sql_context"], sql) if sql else None
        match = execution_match(row["sql_context"], row["sql"], sql)  # None: the gold itself fails
        records.append({"id": row.get("id", i), "sql_prompt": row["sql_prompt"], "gold_sql": row["sql"],
                        "generated_text": text, "extracted_sql": sql, "format_ok": scores["sql_format"][i] == 1.0,
                        "strict_format_ok": strict[i] == 1.0, "valid_sql": bool(result and result.ok),
                        "execution_match": match, "sql_error": result.error if result else "no SQL found",
                        **{f"reward/{n}": scores[n][i] for n in REWARDS},
                        "reward_total": sum(scores[n][i] or 0.0 for n in REWARDS)})

    # 5. judge
    if s.judge_url:
        for row, record in zip(rows, records):
            record.update(ask_judge(s, row, record))

    # 6. outputs
    n, graded = len(records), [r for r in records if r["execution_match"] is not None]
    metrics = {
        "execution_accuracy": sum(bool(r["execution_match"]) for r in graded) / len(graded) if graded else None,
        "valid_sql_rate": sum(r["valid_sql"] for r in records) / n,
        "format_rate": sum(r["format_ok"] for r in records) / n,
        "strict_format_rate": sum(r["strict_format_ok"] for r in records) / n,
        **{f"reward/{name}": sum(r[f"reward/{name}"] or 0.0 for r in records) / n for name in REWARDS},
        "reward_total": sum(r["reward_total"] for r in records) / n,
        "num_examples": n, "num_ungraded": n - len(graded),
        "mean_completion_tokens": sum(gen.lengths) / n, "truncated_fraction": sum(gen.truncated) / n,
        "seconds": seconds,
    }
    if s.judge_url:
        judged = [r for r in records if not r["judge_error"]]
        for k in JUDGE_SCORES:
            metrics[f"judge/{k}"] = sum(r[f"judge_{k}"] for r in judged) / len(judged) if judged else None
        metrics["judge/failures"] = n - len(judged)
        metrics["judge/error_types"] = dict(Counter(r["judge_error_type"] for r in judged))
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    jsonl = atomic_write_text(csv_path.with_suffix(".jsonl"),
                              "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    summary = atomic_write_json(csv_path.with_suffix(".json"), {"model": s.model_path or s.model, **metrics,
                                "csv": str(csv_path), "jsonl": str(jsonl), "settings": dataclasses.asdict(s)})
    print("\n".join(f"{k:<28} {v:.4f}" if isinstance(v, float) else f"{k:<28} {v}" for k, v in metrics.items()))
    print(f"per-example results: {csv_path} and {jsonl}\nsummary: {summary}")


if __name__ == "__main__":
    cli_main(main)
