"""Equal-budget comparison with TRL: the same GRPO run through our trainer and TRL's GRPOTrainer, side by side.

Run (needs the optional `bench` extra, TRL):
    python scripts/compare_trl.py                                  # smollm2-135m + LoRA, arithmetic task, 30 steps
    python scripts/compare_trl.py --model tiny-llama --max-steps 6 --out /tmp/cmp     # quick check
    python scripts/compare_trl.py --config configs/recipe_drill.json --out docs/compare_trl_drill   # + held-out
        accuracy every eval_steps (a sectioned config is read as `common` + `grpo`, as train_grpo.py reads it)

Steps:
 1. Both runs are made by scripts/bench_grpo_step.py in one command (its worker subprocesses, lock-step, ABBA
    order so that load from other processes on a shared CPU hits both alike): the same model and initial LoRA
    adapter, the same prompts at every step (TRL reads the rows in our sampler's order; checked per step), the
    same G, lengths, optimiser, LR and seed, and the task's reward functions called exactly as our trainer
    calls them (chat-message prompts, completions = prompt_suffix + generated text). The samples themselves
    differ (each framework draws its own random numbers).
 2. Step 1 of each is a warm-up (lazy initialisation, torch.compile): it is in the reward curves but not in
    the timings.
 3. With --eval-steps N (held-out accuracy at equal steps): each framework saves its adapter every N steps
    and after the last (bench_grpo_step.py --save-adapters, untimed); scripts/eval_grpo.py then evaluates the
    base model and every saved adapter on the task's held-out split (eval_split, eval_num_examples, greedy,
    eval_max_new_tokens) with the same evaluator as our training loop (grpo.evaluation). The metric is the
    rate of the task's only reward function (the accuracy, for the drill task), else the mean reward.
 4. Side-by-side table on stdout and <out>.md / <out>.csv (with versions and the command), every step in
    <out>.json, both reward curves in <out>.png, and with --eval-steps both held-out curves in <out>_heldout.png.

Glossary: s_step median seconds per step (after the warm-up) · tokens_s median completion tokens per second ·
peak_rss_mb process high-water mark · steps_peak_rss_mb high-water mark during the steps only ·
reward_first5 / reward_last5 mean reward of the first / last 5 steps · load1 mean 1-minute load average
during the steps (2 cores: above 2 means other processes competed for the CPU) · heldout_before / heldout_after
held-out metric of the base model / after the last step, heldout_se the larger binomial standard error of the two.
"""
from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Literal

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grpo.config import UserError, at_least, cli_main, parse_settings  # noqa: E402
from grpo.plots import plot_curves  # noqa: E402
from grpo.run import markdown_table, write_report  # noqa: E402
from grpo.settings import GRPOSettings, TaskSettings  # noqa: E402
from grpo.tasks import PRESET_OF_TASK  # noqa: E402
from rewards import PRESETS  # noqa: E402

BENCH = Path(__file__).resolve().parent / "bench_grpo_step.py"
EVAL = Path(__file__).resolve().parent / "eval_grpo.py"


@dataclass
class CompareSettings(GRPOSettings):
    max_steps: int = 30
    """steps per framework (the first is a warm-up: in the curves, not in the timings)"""
    prompts_per_step: int = 2
    """B: prompts per generation batch (small: this runs on a 2-core CPU)"""
    max_completion_length: int = 64
    """L: new tokens per completion at most"""
    schedule: Literal["interleaved", "sequential"] = "interleaved"
    """interleaved: one step of each in turn (ABBA); sequential: all steps of ours, then all of TRL's"""
    threads: int = 1
    """torch threads per worker (0 = torch's default); 1 because on a shared 2-core CPU a second OpenMP
    thread waits on a busy core: small matmuls measured 25× slower with 2 threads at load average 5"""
    window: int = 5
    """steps averaged for the first/last reward and the running mean in the plot"""
    out: str = "docs/compare_trl"
    """output prefix: <out>.md, <out>.csv, <out>.json, <out>.png ('' = print only)"""

    def validate(self) -> None:
        """Ranges, checked before the benchmark starts (grpo.config [D9]; GRPOSettings checks its own)."""
        at_least(self, "max_steps", 2, why="step 1 is a warm-up")
        at_least(self, "threads", 0, why="0 = torch's default")
        at_least(self, "window", 1)


def flag(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    return json.dumps(value) if isinstance(value, list) else str(value)


def run_bench(s: CompareSettings, tmp: Path) -> dict:
    """Both runs through scripts/bench_grpo_step.py (a subprocess: scripts never import scripts)."""
    argv = [f"--{f.name}={flag(getattr(s, f.name))}" for f in fields(GRPOSettings)]
    argv += ["--warmup=1", f"--steps={s.max_steps - 1}", f"--schedule={s.schedule}", f"--threads={s.threads}",
             "--frameworks=ours,trl", f"--out={tmp / 'bench'}"]
    argv += [f"--save-adapters={tmp / 'adapters'}"] if s.eval_steps else []
    done = subprocess.run([sys.executable, str(BENCH), *argv])
    if done.returncode != 0:
        raise UserError(f"{BENCH.name} failed with exit code {done.returncode}")
    return json.loads((tmp / "bench.json").read_text())


def held_out(s: CompareSettings, tmp: Path) -> dict[str, list[dict]]:
    """scripts/eval_grpo.py on the base model and on every saved adapter: {framework: [{step, value, se}]},
    step 0 (the base model) first; the metric is `heldout_metric`."""
    task_flags = [f"--{f.name}={flag(getattr(s, f.name))}" for f in fields(TaskSettings)]
    eval_flags = [f"--split={s.eval_split}", f"--num-examples={flag(s.eval_num_examples)}",
                  f"--batch-size={s.eval_batch_size}", f"--max-new-tokens={s.eval_max_new_tokens or s.max_completion_length}"]
    metric = heldout_metric(s)

    def evaluate(model_path: str, name: str) -> dict:
        out = tmp / f"eval-{name}.json"
        done = subprocess.run([sys.executable, str(EVAL), *task_flags, *eval_flags, f"--model-path={model_path}",
                               f"--output-file={out}"], stdout=subprocess.DEVNULL)
        if done.returncode != 0:
            raise UserError(f"{EVAL.name} failed on {model_path} with exit code {done.returncode}")
        summary = json.loads(out.read_text())
        return {"value": summary[metric], "se": summary.get(f"{metric}_stderr", math.nan), "summary": summary}

    base = {"step": 0, **evaluate(s.model, "base")}
    curves = {}
    for name in ("ours", "trl"):
        curves[name] = [base] + [{"step": int(p.name.split("-")[1]), **evaluate(str(p), f"{name}-{p.name}")}
                                 for p in sorted((tmp / "adapters" / name).glob("step-*"))]
    return curves


def heldout_metric(s: CompareSettings) -> str:
    """The rate of the task's only reward function (the accuracy, for drill), else the mean weighted reward."""
    names = s.reward_funcs or PRESETS[PRESET_OF_TASK[s.task]]
    return f"{names[0]}/rate" if len(names) == 1 else "reward"


def summarise(bench: dict, window: int) -> dict[str, dict]:
    out = {}
    for name, timing in bench["summary"].items():
        rewards = [r["reward"] for r in bench["records"] if r["framework"] == name]  # step order
        out[name] = {"framework": name, "steps": len(rewards), "s_step": timing["s_step"],
                     "tokens_s": timing["tokens_s"], "len": timing["len"], "peak_rss_mb": timing["peak_rss_mb"],
                     "steps_peak_rss_mb": timing["steps_peak_rss_mb"],
                     "reward_first5": statistics.mean(rewards[:window]),
                     "reward_last5": statistics.mean(rewards[-window:]), "load1": timing["load1"]}
    return out


COLUMNS = [("framework", "{}"), ("steps", "{}"), ("s_step", "{:.2f}"), ("tokens_s", "{:.1f}"), ("len", "{:.1f}"),
           ("peak_rss_mb", "{:.0f}"), ("steps_peak_rss_mb", "{:.0f}"), ("reward_first5", "{:.3f}"),
           ("reward_last5", "{:.3f}"), ("load1", "{:.2f}")]
HELD_OUT_COLUMNS = [("heldout_before", "{:.3f}"), ("heldout_after", "{:.3f}"), ("heldout_se", "{:.3f}")]


def markdown(rows: dict[str, dict], title: str) -> str:
    columns = COLUMNS + (HELD_OUT_COLUMNS if "heldout_after" in rows["ours"] else [])
    lines = [markdown_table(title, rows.values(), columns).rstrip("\n")]
    o, t = rows["ours"], rows["trl"]
    lines += ["", f"ours ÷ TRL: time per step {o['s_step'] / t['s_step']:.2f}× (target ≤ 0.6), tokens/s "
                  f"{o['tokens_s'] / t['tokens_s']:.2f}×, peak RSS {o['peak_rss_mb'] / t['peak_rss_mb']:.2f}× "
                  f"(target ≤ 0.8); reward over the last steps {o['reward_last5']:.3f} vs {t['reward_last5']:.3f}"]
    if "heldout_after" in o:
        gain = {n: r["heldout_after"] - r["heldout_before"] for n, r in rows.items()}
        lines += [f"held-out {o['heldout_metric']} after {o['steps']} steps: ours {o['heldout_after']:.3f}, TRL "
                  f"{t['heldout_after']:.3f} (base {o['heldout_before']:.3f}); gain ours {gain['ours']:+.3f}, TRL "
                  f"{gain['trl']:+.3f}, standard error of one value ≤ {max(o['heldout_se'], t['heldout_se']):.3f}"]
    return "\n".join(lines) + "\n"


def main() -> None:
    s = parse_settings(CompareSettings, description=__doc__, section="grpo")  # a recipe: common + grpo
    command = "python " + " ".join([os.path.relpath(__file__)] + sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="compare-trl-") as tmp:
        bench = run_bench(s, Path(tmp))
        heldout = held_out(s, Path(tmp)) if s.eval_steps else {}
    rows = summarise(bench, s.window)
    for name, points in heldout.items():
        first, last = points[0], points[-1]
        rows[name].update(heldout_metric=heldout_metric(s), heldout_before=first["value"], heldout_after=last["value"],
                          heldout_se=max(first["se"], last["se"]))
    load = f"{bench['loadavg_before'][0]:.2f}/{bench['loadavg_after'][0]:.2f}"
    title = (f"GRPO, {s.task} task, {s.model} (LoRA {s.use_lora}), B={s.prompts_per_step} G={s.num_generations} "
             f"L={s.max_completion_length}, lr {s.learning_rate}, {s.max_steps} steps, {s.schedule}; load avg "
             f"before/after {load} on {os.cpu_count()} CPUs\n\n`{command}`")
    table = markdown(rows, title)
    print(table)
    if s.out:
        out = Path(s.out)
        write_report(out, text=table, rows=rows.values(),
                     columns=[c for c, _ in COLUMNS + (HELD_OUT_COLUMNS if heldout else [])],
                     csv_extra={"versions": json.dumps(bench["versions"]), "command": command},
                     payload={"command": command, "settings": asdict(s), "versions": bench["versions"],
                              "summary": rows, "held_out": heldout, "loadavg_before": bench["loadavg_before"],
                              "loadavg_after": bench["loadavg_after"], "records": bench["records"]})
        curves = {label: [(r["step"], r["reward"]) for r in bench["records"] if r["framework"] == name]
                  for name, label in (("ours", "ours"), ("trl", "TRL"))}
        plot_curves(curves, out.with_suffix(".png"), smooth=s.window, ylabel="mean reward",
                    title=f"{s.task} · {s.model} · B={s.prompts_per_step} G={s.num_generations} "
                          f"L={s.max_completion_length}")
        if heldout:
            plot_curves({label: [(p["step"], p["value"]) for p in heldout[name]]
                         for name, label in (("ours", "ours"), ("trl", "TRL"))},
                        out.with_name(out.name + "_heldout.png"), smooth=1, ylabel=f"held-out {heldout_metric(s)}",
                        title=f"{s.task} · {s.model} · held-out, greedy")
        print(f"wrote {out.with_suffix('.md')}, .csv, .json, .png", file=sys.stderr)


if __name__ == "__main__":
    cli_main(main)
