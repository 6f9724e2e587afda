"""Preference accuracy of a policy's implicit reward on held-out preference pairs (GenPref-SEGA evaluation).

    python scripts/eval_pref_accuracy.py --model smollm2-135m                        # bundled test split
    python scripts/eval_pref_accuracy.py --model_name_or_path outputs/sega-demo --eval_jsonl pairs.jsonl --beta 1.0
    python scripts/eval_pref_accuracy.py --model sft-demo --output-file runs/sft.json   # run name, adapter, folder
    python scripts/eval_pref_accuracy.py --config configs/sega_demo.yaml --model sega-demo

`--model` takes a named model (tiny-llama, smollm2-135m), a run name (`sega-demo` → outputs/sega-demo/final),
a Hugging Face model folder, a PEFT adapter folder (its base is loaded first) or a hub id.
Aliases of the original README: --model_name_or_path → --model, --eval_jsonl → --data.

Steps (sega/implicit_reward.py, ALGORITHMS.md §4):
    1. settings; the pairs {"prompt", "chosen", "rejected"} (bundled test split, or --data FILE.jsonl)
    2. load the model in eval mode (no new adapter, nothing trainable)
    3. per pair, the chat-formatted prompt q and each answer a + EOS tokenised jointly; completion tokens
       found by character offsets, so a token merged across the q‖a boundary is aligned exactly
    4. r(q, a) = β · Σ_t lp_θ(a_t | q, a_<t) at T = 1, and the length-normalised r̄ = r / |a|
    5. accuracy = fraction of pairs with r(chosen) > r(rejected); ties (=) reported apart; JSON written
       atomically and printed

Metrics (the JSON file and stdout):
    n                                  pairs evaluated
    beta                               β (a positive scale: it never changes a ranking)
    accuracy, ties                     fraction with r(chosen) > r(rejected), and with equality
    accuracy_length_normalized, ties_length_normalized   the same for the per-token mean r̄
    reward_chosen_mean, reward_rejected_mean, margin_mean   mean r(chosen), r(rejected), r(chosen) − r(rejected)
    seconds                            wall time of the scoring
"""
from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grpo.config import UserError, above, at_least, cli_main, parse_settings  # noqa: E402
from grpo.data.rows import DataError  # noqa: E402
from grpo.models import ModelSettings, load_model_from_settings  # noqa: E402
from grpo.run import atomic_write_json, output_root, resolve_run_path  # noqa: E402
from sega.data import load_pairs  # noqa: E402
from sega.implicit_reward import preference_accuracy  # noqa: E402

ALIASES = {"model_name_or_path": "model", "eval_jsonl": "data"}


@dataclass
class PrefEvalSettings(ModelSettings):
    data: str = "bundled"
    """pairs to score: `bundled` (sega/data), a .jsonl/.json file or a folder holding {split}.jsonl"""
    split: str = "test"
    """split of the bundled set or folder (the bundled `test` split is held out from training)"""
    limit: int | None = None
    """evaluate the first N pairs only"""
    beta: float = 1.0
    """β of the implicit reward r(q, a) = β·Σ lp"""
    batch_size: int = 8
    """sequences scored together"""
    output_file: str = ""
    """JSON output; default: <run>/pref_accuracy-<data>-<split>.json for a run (name or folder with final/),
    else outputs/eval/pref_accuracy-<model>-<data>-<split>.json"""

    def validate(self) -> None:
        """Ranges, checked before anything loads (grpo.config [D9]; the base classes check their own)."""
        at_least(self, "limit", 1, why="null = all")
        above(self, "beta", 0)
        at_least(self, "batch_size", 1)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_.") or "model"


def output_path(s: PrefEvalSettings) -> Path:
    """--output-file, else <run>/pref_accuracy-<data>-<split>.json for a run's final/ model (beside the
    pref_accuracy.json that train_sega.py writes), else outputs/eval/pref_accuracy-<model>-<data>-<split>.json."""
    if s.output_file:
        return Path(s.output_file).expanduser()
    name = f"{_slug(Path(s.data).stem if s.data != 'bundled' else s.data)}-{_slug(s.split)}.json"
    resolved = resolve_run_path(s.model)
    if resolved.name == "final" and resolved.is_dir():
        return resolved.parent / f"pref_accuracy-{name}"
    return output_root() / "eval" / f"pref_accuracy-{_slug(s.model)}-{name}"


def main() -> None:
    # 1. settings and pairs (read before the model, so a bad file fails fast)
    s = parse_settings(PrefEvalSettings, description=__doc__, section="eval", aliases=ALIASES)
    try:
        rows = load_pairs(s.data, s.split, s.limit)
    except DataError as e:
        raise UserError(str(e)) from None
    if not rows:
        raise UserError(f"no preference pairs in {s.data} [{s.split}]")
    # 2. model, frozen
    model, tok = load_model_from_settings(s, trainable=False)
    # 3.-5. implicit rewards, accuracy, JSON
    t0 = time.perf_counter()
    acc = preference_accuracy(model, tok, rows, beta=s.beta, batch_size=s.batch_size)
    result = {**acc, "seconds": time.perf_counter() - t0, "model": s.model, "data": s.data, "split": s.split,
              "settings": asdict(s)}
    out = atomic_write_json(output_path(s), result)
    print(json.dumps({k: v for k, v in result.items() if k != "settings"}, indent=2))
    print(f"preference accuracy {acc['accuracy']:.4f} (ties {acc['ties']:.4f}; length-normalised "
          f"{acc['accuracy_length_normalized']:.4f}, ties {acc['ties_length_normalized']:.4f}) on {acc['n']} "
          f"pairs; written to {out}", file=sys.stderr)


if __name__ == "__main__":
    cli_main(main)
