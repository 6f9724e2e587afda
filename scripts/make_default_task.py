"""Write the generated bundled data files (package data) from their generator functions.

    grpo/data/arithmetic_{train,test}.jsonl   2,000 / 200 arithmetic word problems, GSM8K's columns
    sega/data/pairs_{train,test}.jsonl        96 / 48 verifiable preference pairs (test held out)

Run from the repository root after changing a generator (the files are deterministic, so an unchanged
generator rewrites identical files):

    python scripts/make_default_task.py          # write the files
    python scripts/make_default_task.py --check  # exit 1 if a file differs from its generator

tests/test_data_arithmetic.py and tests/test_data_pairs.py run the same comparison. The hand-written
text-to-SQL set (grpo/data/sql_*.jsonl) is not generated and is not touched here.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from grpo.data import arithmetic
from sega import data as sega_data


def jsonl_text(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def targets() -> dict[Path, str]:
    out = {}
    for split in arithmetic.BUNDLED_SIZES:
        # Only GSM8K's own columns are stored; `load_gsm8k` derives `gold` and `cot` from `answer`.
        rows = [{"question": r["question"], "answer": r["answer"]} for r in arithmetic.bundled_rows(split)]
        out[arithmetic.BUNDLED_DIR / f"arithmetic_{split}.jsonl"] = jsonl_text(rows)
    for split in sega_data.BUNDLED_SIZES:
        out[sega_data.BUNDLED_DIR / f"pairs_{split}.jsonl"] = jsonl_text(sega_data.bundled_pairs(split))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on a difference")
    args = ap.parse_args()
    stale = []
    for path, text in targets().items():
        n = text.count("\n")
        if args.check:
            ok = path.is_file() and path.read_text(encoding="utf-8") == text
            print(f"{'ok   ' if ok else 'STALE'} {path} ({n} rows)")
            stale += [] if ok else [path]
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path} ({n} rows)")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
