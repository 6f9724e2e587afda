"""Evaluate a model on GSM8K in system B's format: Accuracy, Thinking Proportion, Answer Proportion.

    python scripts/evaluate_model.py --config configs/gsm8k.json --output-file base_model_eval.csv
    python scripts/evaluate_model.py --config configs/gsm8k.json --model-path sft_model --output-file sft_model_eval.csv
    python scripts/evaluate_model.py --config configs/gsm8k.json --model-path grpo_model \\
        --output-file grpo_model_eval.csv --dataset ../shared/data/gsm8k          # offline: local test.jsonl

`--model-path` takes a run name (`sft_model` → outputs/sft_model/final), a folder, a named model or a
hub id; without it the base `model` is evaluated. Config files: a flat JSON/YAML of the settings below,
or a sectioned one (configs/gsm8k.json) of which this script reads `common` then `evaluate`.
Defaults follow REWARDS.md B: the first 512 test rows, T = 0.7, top-k 50, 512 new tokens.

Steps:
    1. settings; the first `num_examples` rows of the split as system B prompts (chat template +
       `<start_working_out>`), read before the model so that a bad dataset fails fast
    2. load the model to evaluate (eval mode, no new adapter)
    3. one completion per prompt, in batches (grpo/generate.py): sampled with the training sampler, or greedy
    4. per example: extract the working out and the answer, compare the answer with the gold
    5. write the per-example CSV and the JSON summary (each atomically), print the metrics

Extraction (the completion starts inside the working-out block: the prompt ends with `<start_working_out>`):
    [E1] extracted_thinking: the text before the first `<end_working_out>` (after the last repeated
         `<start_working_out>` before it, if the model wrote one), stripped; "" without `<end_working_out>`.
    [E2] extracted_answer: the text between the first `<SOLUTION>` and the next `</SOLUTION>`, stripped;
         "" when there is none. Lenient on purpose; the format rewards are the strict checks.
    [E3] correct: REWARDS.md B's rule (rewards.math_answers.accuracy_match): equal as floats within 1e-6
         after removing commas, else equal as stripped strings; the gold is GSM8K's text after "####".

Metrics (printed, and in the summary JSON next to the CSV):
    accuracy                fraction of examples whose extracted answer is correct [E3]
    thinking_proportion     fraction with a non-empty extracted_thinking [E1]
    answer_proportion       fraction with a non-empty extracted_answer [E2]
    mean_completion_tokens  generated tokens per example (up to and including EOS)
    truncated_fraction      fraction that reached max_new_tokens without EOS
    seconds                 wall time of generation
    tokens_per_second       generated tokens per second

Outputs: `output_file` (CSV; a bare file name goes to outputs/debug/ as in the original pipeline, a path
with a folder is used as given), columns question, labeled_cot, labeled_answer, generated_text,
extracted_thinking, extracted_answer, correct; and the same path with suffix .json: metrics + settings.
"""
from __future__ import annotations

import csv
import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grpo.config import UserError, at_least, cli_main, parse_settings, path_name  # noqa: E402
from grpo.data import DataError, load_gsm8k, to_working_out_prompts  # noqa: E402
from grpo.generate import GenerationSettings  # noqa: E402
from grpo.models import ModelSettings, load_model_from_settings  # noqa: E402
from grpo.run import atomic_path, atomic_write_json, output_file as grpo_output_file, seed_everything  # noqa: E402
from rewards.math_answers import accuracy_match  # noqa: E402

COLUMNS = ["question", "labeled_cot", "labeled_answer", "generated_text", "extracted_thinking",
           "extracted_answer", "correct"]
WORK_START, WORK_END, SOL_START, SOL_END = "<start_working_out>", "<end_working_out>", "<SOLUTION>", "</SOLUTION>"


@dataclass
class EvalSettings(GenerationSettings, ModelSettings):
    model_path: str | None = None
    """model to evaluate: a run name (sft_model), folder, named model or hub id; default: `model`"""
    dataset: str = "openai/gsm8k"
    """GSM8K rows: hub id, .jsonl/.json file, folder holding {split}.jsonl, or `arithmetic` (bundled)"""
    split: str = "test"
    """split to evaluate"""
    num_examples: int | None = 512
    """evaluate the first N rows of the split; null = all"""
    output_file: str = "eval.csv"
    """per-example CSV; a bare name goes to outputs/debug/ ($GRPO_OUTPUT_ROOT/debug); summary beside it as .json"""
    # GenerationSettings with this script's defaults
    batch_size: int = 16
    """prompts generated together"""
    max_new_tokens: int = 512
    """most tokens generated per completion"""
    temperature: float = 0.7
    """sampling temperature"""
    top_k: int = 50
    """sample among the k most likely tokens; 0 = off"""
    greedy: bool = False
    """decode greedily (argmax) instead of sampling; temperature, top_k and top_p are then unused"""

    def validate(self) -> None:
        """Ranges, checked before anything loads (grpo.config [D9]; the base classes check their own)."""
        at_least(self, "num_examples", 1, why="null = all")
        path_name(self, "output_file", kind="file")


def extract_thinking(completion: str) -> str:
    """[E1] The working out: text before the first `<end_working_out>`, "" if there is none."""
    end = completion.find(WORK_END)
    if end < 0:
        return ""
    start = completion.rfind(WORK_START, 0, end)
    return completion[start + len(WORK_START) if start >= 0 else 0:end].strip()


def extract_answer(completion: str) -> str:
    """[E2] The text between the first `<SOLUTION>` and the next `</SOLUTION>`, "" if there is none."""
    start = completion.find(SOL_START)
    end = completion.find(SOL_END, start + len(SOL_START)) if start >= 0 else -1
    return completion[start + len(SOL_START):end].strip() if end >= 0 else ""


def output_paths(output_file: str) -> tuple[Path, Path]:
    """(CSV path, summary JSON path): a bare file name lives in outputs/debug/."""
    path = grpo_output_file(output_file, "debug")
    return path, path.with_suffix(".summary.json" if path.suffix == ".json" else ".json")


def main() -> None:
    # 1. settings, prompts (read before the slow model load)
    s = parse_settings(EvalSettings, section="evaluate", description=__doc__)
    csv_path, summary_path = output_paths(s.output_file)
    seed_everything(s.seed)
    try:
        rows = to_working_out_prompts(load_gsm8k(s.dataset, s.split, s.num_examples))
    except DataError as e:
        raise UserError(str(e)) from None
    if not rows:
        raise UserError(f"{s.dataset} [{s.split}] has no rows")

    # 2. model
    model, tok = load_model_from_settings(s, trainable=False, model=s.model_path)

    # 3. generation
    t0 = time.perf_counter()
    gen = s.generate(model, tok, [r["prompt"] for r in rows], prompt_suffix=rows[0]["prompt_suffix"], desc="evaluate")
    texts, lengths, truncated = gen.texts, gen.lengths, gen.truncated
    seconds = time.perf_counter() - t0

    # 4. extraction and scoring
    records = []
    for row, text in zip(rows, texts):
        thinking, answer = extract_thinking(text), extract_answer(text)
        records.append({"question": row["question"], "labeled_cot": row["cot"], "labeled_answer": row["answer"],
                        "generated_text": text, "extracted_thinking": thinking, "extracted_answer": answer,
                        "correct": accuracy_match(answer or None, row["answer"])})
    n = len(records)
    metrics = {
        "accuracy": sum(r["correct"] for r in records) / n,
        "thinking_proportion": sum(r["extracted_thinking"] != "" for r in records) / n,
        "answer_proportion": sum(r["extracted_answer"] != "" for r in records) / n,
        "num_examples": n,
        "num_correct": sum(r["correct"] for r in records),
        "mean_completion_tokens": sum(lengths) / n,
        "truncated_fraction": sum(truncated) / n,
        "seconds": seconds,
        "tokens_per_second": sum(lengths) / max(seconds, 1e-9),
    }

    # 5. outputs
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(records)
    atomic_write_json(summary_path, {"model": s.model_path or s.model, **metrics, "csv": str(csv_path),
                                     "settings": dataclasses.asdict(s)})
    print(f"Accuracy: {metrics['accuracy']:.2%} ({metrics['num_correct']}/{n})\n"
          f"Thinking Proportion: {metrics['thinking_proportion']:.2%}\n"
          f"Answer Proportion: {metrics['answer_proportion']:.2%}\n"
          f"per-example results: {csv_path}\nsummary: {summary_path}")


if __name__ == "__main__":
    cli_main(main)
