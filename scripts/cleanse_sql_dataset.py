"""Cleanse a text-to-SQL dataset (system C, REWARDS.md C): keep rows whose context builds and gold executes.

    python scripts/cleanse_sql_dataset.py --config configs/text_to_sql.json            # bundled train split
    python scripts/cleanse_sql_dataset.py --dataset gretelai/synthetic_text_to_sql --split train \\
        --output-file outputs/data/sql_clean.jsonl
    python scripts/cleanse_sql_dataset.py --dataset my_rows.jsonl --output-file my_rows.clean.jsonl

Rows are in the gretelai/synthetic_text_to_sql format (`sql_prompt`, `sql_context`, `sql`, optional
columns kept as they are). Every context and gold query runs in the SQLite sandbox of the rewards
(rewards/sql_sandbox.py: in memory, time limit, no ATTACH / extensions / file access), on a fresh
database per row, so this keeps exactly the rows the execution reward can grade. Config files: flat,
or sectioned (this script reads `common` then `cleanse`). No model is loaded.

Steps:
    1. settings; the raw rows of the source (a malformed row is dropped and counted, not fatal)
    2. per row: build the context; run the gold query (one statement) on it; decide keep / drop
    3. write the kept rows as JSONL and a report JSON beside it (each atomically); print the counts

Drop reasons (the report counts each, and lists the first `show_examples` with their location):
    malformed         not an object with string sql_prompt / sql_context / sql (wrong optional types too)
    context_error     a context statement fails in SQLite (e.g. MySQL-only syntax, a bad INSERT)
    context_refused   the sandbox stops the context (time or size limit, ATTACH, PRAGMA, …)
    gold_error        the gold query fails on the built database (its SQLite message is reported)
    gold_refused      the sandbox stops the gold query (time limit, several statements, ATTACH, …)
    gold_empty        the gold SELECT returns no row (only with --drop-empty-results; off by default)
    duplicate         same (sql_prompt, sql_context, sql) as a kept row (only with --drop-duplicates)

Report fields: source, split, rows_read, kept, dropped, dropped_by_reason, examples, output, settings.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grpo.config import UserError, above, at_least, cli_main, parse_settings, path_name  # noqa: E402
from grpo.data import DataError  # noqa: E402
from grpo.data.rows import check_row, iter_items  # noqa: E402
from grpo.data.text_to_sql import BUNDLED, BUNDLED_DIR, OPTIONAL, REQUIRED  # noqa: E402
from grpo.run import atomic_write_json, atomic_write_text, output_file, progress  # noqa: E402
from rewards.sql_sandbox import SqlContextError, build_database, execute_sql  # noqa: E402
from rewards.sql_text import statement_type  # noqa: E402

# the reasons a sandbox refusal names (rewards/sql_worker.py [D7], sql_watchdog.py, sql_sandbox.py [D1])
SANDBOX_REFUSALS = ("time limit exceeded", "denied by the sandbox", "size limit exceeded",
                    "SQL text SQLite cannot take", "more than one statement", "sandbox worker died",
                    "database lost")
REASONS = ("malformed", "context_error", "context_refused", "gold_error", "gold_refused", "gold_empty",
           "duplicate")


@dataclass
class CleanseSettings:
    dataset: str = "bundled"
    """rows to cleanse: bundled, a gretel-format .jsonl/.json file or folder, or a hub id"""
    split: str = "train"
    """split (bundled, folder or hub id)"""
    hub_config: str | None = None
    """hub dataset config name, if the dataset has several"""
    limit: int | None = None
    """read only the first N rows (good or bad); null = all"""
    output_file: str = "sql_clean.jsonl"
    """kept rows as JSONL; a bare name goes to outputs/data/ ($GRPO_OUTPUT_ROOT/data); report beside it"""
    time_limit_s: float = 1.0
    """sandbox time limit per gold query (and 5x this for building the whole context of a row)"""
    drop_empty_results: bool = False
    """also drop rows whose gold SELECT returns no row (such rows give the reward little to compare)"""
    drop_duplicates: bool = False
    """also drop rows identical (question, context, gold) to a kept one"""
    show_examples: int = 3
    """dropped rows listed per reason in the output and the report"""

    def validate(self) -> None:
        """Ranges, checked before anything loads (grpo.config [D9])."""
        at_least(self, "limit", 1, why="null = all")
        path_name(self, "output_file", kind="file")
        above(self, "time_limit_s", 0)
        at_least(self, "show_examples", 0)


def check(row: dict, s: CleanseSettings) -> tuple[str | None, str]:
    """(drop reason or None to keep, detail) for one well-formed row, on a database used once."""
    try:
        conn = build_database(row["sql_context"], time_limit_s=5 * s.time_limit_s)
    except SqlContextError as e:
        message = str(e).split("\n")[0]
        return ("context_refused" if any(w in message for w in SANDBOX_REFUSALS) else "context_error"), message
    try:
        result = execute_sql(conn, row["sql"], time_limit_s=s.time_limit_s, max_rows=1)
    finally:
        conn.close()
    if result.refused:
        return "gold_refused", result.error or ""
    if not result.ok:
        return "gold_error", result.error or ""
    if s.drop_empty_results and statement_type(row["sql"]) in ("SELECT", "WITH_UNKNOWN") and not result.rows:
        return "gold_empty", "the gold query returns no row"
    return None, ""


def main() -> None:
    # 1. settings, source
    s = parse_settings(CleanseSettings, section="cleanse", description=__doc__)
    out_path = output_file(s.output_file, "data")
    source: str | Path = s.dataset
    if s.dataset == BUNDLED:
        source = BUNDLED_DIR / f"sql_{s.split}.jsonl"
        if not source.is_file():
            raise UserError(f"no bundled text-to-SQL split {s.split!r} (have: train, test)")

    # 2. check every row
    kept, reasons, examples, seen = [], Counter(), {r: [] for r in REASONS}, set()
    rows_read = 0
    try:
        for where, item in progress(iter_items(source, split=s.split, config=s.hub_config), desc="cleanse"):
            if s.limit is not None and rows_read >= s.limit:
                break
            rows_read += 1
            try:
                if isinstance(item, DataError):
                    raise item
                row = check_row(dict(item) if isinstance(item, dict) else item, where,
                                required=REQUIRED, optional=OPTIONAL)
                reason, detail = check(row, s)
            except DataError as e:
                row, reason, detail = None, "malformed", str(e).removeprefix(f"{where}: ")
            key = None if row is None else (row["sql_prompt"], row["sql_context"], row["sql"])
            if reason is None and s.drop_duplicates and key in seen:
                reason, detail = "duplicate", "same question, context and gold as a kept row"
            if reason is None:
                kept.append(row)
                seen.add(key)
                continue
            reasons[reason] += 1
            if len(examples[reason]) < s.show_examples:
                examples[reason].append(f"{where}: {detail}"[:300])
    except DataError as e:  # the source itself: missing file, unreachable hub id
        raise UserError(str(e)) from None
    if rows_read == 0:
        raise UserError(f"{s.dataset} [{s.split}] has no rows")

    # 3. outputs
    atomic_write_text(out_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
    dropped = rows_read - len(kept)
    report = {"source": str(source), "split": s.split, "rows_read": rows_read, "kept": len(kept),
              "dropped": dropped, "dropped_by_reason": {r: reasons.get(r, 0) for r in REASONS},
              "examples": {r: e for r, e in examples.items() if e}, "output": str(out_path),
              "settings": dataclasses.asdict(s)}
    report_path = atomic_write_json(out_path.with_suffix(".report.json"), report)
    print(f"read {rows_read} rows: kept {len(kept)}, dropped {dropped}")
    for reason in REASONS:
        if reasons.get(reason):
            print(f"  {reason:<16} {reasons[reason]:>6}")
            for example in examples[reason]:
                print(f"      e.g. {example}")
    print(f"kept rows: {out_path}\nreport: {report_path}")


if __name__ == "__main__":
    cli_main(main)
