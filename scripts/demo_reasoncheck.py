"""Before/after demo of grpo-reasoncheck (system E, REWARDS.md E): base model vs. trained model on GSM8K.

    python scripts/demo_reasoncheck.py --config configs/reasoncheck.json                  # trained: reasoncheck_grpo
    python scripts/demo_reasoncheck.py --config configs/reasoncheck.json \\
        --trained outputs/reasoncheck_grpo/checkpoints/step-000100
    python scripts/demo_reasoncheck.py --config configs/reasoncheck.json --dataset ../shared/data/gsm8k --num-examples 5

`--trained` is a run name (reasoncheck_grpo → outputs/reasoncheck_grpo/final), a checkpoint or model
folder, or a hub id; an adapter loads on the base it was trained from. `--model` is the "before" model.
Config files: flat, or sectioned (this script reads `common` then `demo`).

Steps:
    1. settings; the first `num_examples` GSM8K rows as system E prompts; the trained model's path is
       checked before anything is loaded
    2. the base model answers every question (greedy by default, so the demo is repeatable)
    3. the trained model answers the same questions
    4. E's five rewards score every answer (rewards.PRESETS["reasoncheck"], max total 4.0)
    5. print each question with the two answers side by side and their rewards; print the totals;
       write the JSON and a Markdown table (each atomically)

Printed per question, for "before" and "after": the answer text, extracted answer vs. gold, and
    xml_count ≤ 0.5, soft_format 0.5, strict_format 0.5, integer 0.5, correctness 2.0, total ≤ 4.0
Totals (printed, and in the JSON `summary`): mean total reward, accuracy (correctness = 2), and the
    fraction of answers in the strict format, for each model.

Outputs: `output_file` (JSON; a bare name goes to outputs/eval/) with one entry per question and the
summary, and the same path with suffix .md: the side-by-side table for a README or an issue.
"""
from __future__ import annotations

import dataclasses
import re
import shutil
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import rewards  # noqa: E402
from grpo.config import UserError, at_least, cli_main, parse_settings, path_name, require  # noqa: E402
from grpo.data import DataError, load_gsm8k, to_reasoning_prompts  # noqa: E402
from grpo.generate import GenerationSettings  # noqa: E402
from grpo.models import ModelSettings, load_model_from_settings, resolve_model_path  # noqa: E402
from grpo.run import atomic_write_json, atomic_write_text, output_file, seed_everything  # noqa: E402
from rewards.reasoncheck import xml_answer  # noqa: E402

REWARDS = rewards.PRESETS["reasoncheck"]  # xml_count, soft_format, strict_format, integer, correctness


@dataclass
class DemoSettings(GenerationSettings, ModelSettings):
    trained: str = "reasoncheck_grpo"
    """the "after" model: run name, checkpoint / model folder or hub id"""
    dataset: str = "openai/gsm8k"
    """GSM8K rows: hub id, .jsonl/.json file, folder holding {split}.jsonl, or `arithmetic` (bundled)"""
    split: str = "test"
    """split the questions come from"""
    num_examples: int = 3
    """questions shown"""
    width: int = 0
    """printed width of the side-by-side view; 0 = the terminal's"""
    output_file: str = "reasoncheck_demo.json"
    """JSON of the demo; a bare name goes to outputs/eval/; a Markdown table beside it (.md)"""
    # GenerationSettings with this script's defaults
    batch_size: int = 4
    """prompts generated together"""
    max_new_tokens: int = 512
    """most tokens per answer"""
    temperature: float = 0.7
    """sampling temperature (greedy=false)"""

    def validate(self) -> None:
        """Ranges, checked before anything loads (grpo.config [D9]; the base classes check their own)."""
        require(self, "trained", bool(self.trained.strip()), "must name the trained model (run, folder or hub id)")
        at_least(self, "num_examples", 1)
        at_least(self, "width", 0, why="0 = the terminal's")
        path_name(self, "output_file", kind="file")


def answer(s: DemoSettings, name: str, prompts: list, *, label: str) -> list[str]:
    """One answer per prompt from the model `name` (loaded, used, then released)."""
    model, tok = load_model_from_settings(s, trainable=False, model=name)
    texts = s.generate(model, tok, prompts, desc=label).texts
    del model
    return texts


def score(prompts: list, texts: list[str], golds: list[str]) -> list[dict[str, float]]:
    """E's five rewards and their total for each answer."""
    table = {name: rewards.get(name)(prompts, texts, answer=golds) for name in REWARDS}
    return [{**{n: float(table[n][i] or 0.0) for n in REWARDS},
             "total": sum(float(table[n][i] or 0.0) for n in REWARDS)} for i in range(len(texts))]


def side_by_side(left: str, right: str, width: int) -> str:
    """Two texts in two columns of (width − 3) / 2 characters, separated by " │ "."""
    col = max(20, (width - 3) // 2)

    def lines(text: str) -> list[str]:
        return [w for para in text.split("\n") for w in (textwrap.wrap(para, col) or [""])]

    a, b = lines(left), lines(right)
    a += [""] * (len(b) - len(a))
    b += [""] * (len(a) - len(b))
    return "\n".join(f"{x:<{col}} │ {y}" for x, y in zip(a, b))


def shown(text: str) -> str:
    """An answer for printing: runs of blank lines collapsed, "(empty)" for nothing."""
    return re.sub(r"\n\s*\n(\s*\n)+", "\n\n", text.strip()) or "(empty)"


def brief(text: str) -> str:
    r = repr(text)
    return r if len(r) <= 14 else r[:13] + "…"


def markdown(entries: list[dict], names: tuple[str, str]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", "<br>")

    out = [f"# reasoncheck demo: `{names[0]}` (before) vs `{names[1]}` (after)", ""]
    for k, e in enumerate(entries, 1):
        out += [f"## {k}. {cell(e['question'])}", f"Gold answer: **{e['gold']}**", "",
                "| | before | after |", "|---|---|---|",
                f"| answer | {cell(e['before']['text'])} | {cell(e['after']['text'])} |",
                f"| extracted | {cell(e['before']['extracted'])} | {cell(e['after']['extracted'])} |"]
        out += [f"| {n} | {e['before']['rewards'][n]:.3f} | {e['after']['rewards'][n]:.3f} |"
                for n in (*REWARDS, "total")]
        out.append("")
    return "\n".join(out)


def main() -> None:
    # 1. settings, questions, trained model path
    s = parse_settings(DemoSettings, section="demo", description=__doc__)
    try:
        rows = to_reasoning_prompts(load_gsm8k(s.dataset, s.split, s.num_examples))
    except DataError as e:
        raise UserError(str(e)) from None
    if not rows:
        raise UserError(f"{s.dataset} [{s.split}] has no rows")
    resolve_model_path(s.trained, cache_dir=s.model_cache_dir or None)  # a typo fails here, not after the base
    seed_everything(s.seed)
    prompts, golds = [r["prompt"] for r in rows], [r["answer"] for r in rows]

    # 2.-3. before and after
    before = answer(s, s.model, prompts, label="before")
    after = answer(s, s.trained, prompts, label="after")

    # 4. rewards
    scores = {"before": score(prompts, before, golds), "after": score(prompts, after, golds)}
    entries = [{"question": r["question"], "gold": g,
                **{k: {"text": t, "extracted": xml_answer(t), "rewards": scores[k][i]}
                   for k, t in (("before", before[i]), ("after", after[i]))}}
               for i, (r, g) in enumerate(zip(rows, golds))]

    # 5. print, write
    width = s.width or shutil.get_terminal_size((120, 24)).columns
    for k, e in enumerate(entries, 1):
        print(f"\n{'=' * width}\n{k}. {e['question']}\n   gold answer: {e['gold']}\n{'-' * width}")
        print(side_by_side(f"BEFORE ({s.model})", f"AFTER ({s.trained})", width))
        print(side_by_side(shown(e["before"]["text"]), shown(e["after"]["text"]), width))
        print("-" * width)
        print(f"{'':<16}{'before':>16}{'after':>16}")
        print(f"{'extracted':<16}{brief(e['before']['extracted']):>16}{brief(e['after']['extracted']):>16}")
        for name in (*REWARDS, "total"):
            print(f"{name:<16}{e['before']['rewards'][name]:>16.3f}{e['after']['rewards'][name]:>16.3f}")
    n = len(entries)
    summary = {k: {"mean_total_reward": sum(e[k]["rewards"]["total"] for e in entries) / n,
                   "accuracy": sum(e[k]["rewards"]["correctness"] == 2.0 for e in entries) / n,
                   "strict_format_rate": sum(e[k]["rewards"]["strict_format"] > 0 for e in entries) / n}
               for k in ("before", "after")}
    print(f"\n{'=' * width}")
    for k, name in (("before", s.model), ("after", s.trained)):
        m = summary[k]
        print(f"{k:<7} {name}: mean total reward {m['mean_total_reward']:.3f} / 4.0, accuracy "
              f"{m['accuracy']:.0%}, strict format {m['strict_format_rate']:.0%}")
    out = output_file(s.output_file, "eval")
    atomic_write_json(out, {"before_model": s.model, "after_model": s.trained, "summary": summary,
                            "examples": entries, "settings": dataclasses.asdict(s)})
    md = atomic_write_text(out.with_suffix(".md"), markdown(entries, (s.model, s.trained)))
    print(f"demo: {out}\ntable: {md}")


if __name__ == "__main__":
    cli_main(main)
