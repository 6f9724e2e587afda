"""Benchmark: seconds per GRPO step, tokens/s and peak RSS of our trainer against TRL's GRPOTrainer.

Run (README table: the first command; `--help` lists every setting):
    python scripts/bench_grpo_step.py                              # smollm2-135m + LoRA, 1 warm-up + 5 timed steps
    python scripts/bench_grpo_step.py --model tiny-llama --steps 3 --out ''      # quick check, print only
    python scripts/bench_grpo_step.py --frameworks ours --max-completion-length 128
    python scripts/bench_grpo_step.py --profile      # + one torch.profiler step per framework: top operators
    .venv-vllm/bin/python scripts/bench_grpo_step.py --use-vllm true   # HF sampling vs vLLM sampling (ours, ours-vllm)

Steps:
 1. Each framework runs in its own worker subprocess (`--_worker ours|trl`), so peak RSS is its own. Both build
    the same thing from the same settings: seed → arithmetic task → model + LoRA through grpo.models (same
    seed, so the same initial adapter) → AdamW at a constant LR → trainer. TRL gets our GRPOSettings key for key
    (GRPOConfig uses the same names), fp32, no gradient checkpointing, per_device_train_batch_size =
    micro_batch_size, gradient_accumulation_steps = N / micro_batch_size (one generation batch per optimiser
    step, as ours), use_bias_correction_kl ours (off by default), and the rows in the order our PromptSampler draws
    them, so step k trains on the same prompts in both (checked per step).
 2. Correctness before timing: the workers report a hash of the initial trainable weights, TRL's prompt token
    ids and EOS ids against ours; the driver stops on any mismatch. The loss itself equals TRL's to 1e-10
    (tests/test_trl_equivalence.py).
 3. Lock-step, interleaved timing: the driver lets one worker run one step at a time, ABBA order (ours, TRL,
    TRL, ours, …), so load from other processes on a shared CPU hits both alike; the idle worker blocks on a
    pipe. A TRL step is timed from `on_step_begin` to `on_step_end` (generation, reward, update; its logging
    afterwards is not counted), ours around `GRPOTrainer.step()`.
 4. Warm-up steps (lazy init, torch.compile) run but are not summarised; median and min–max over the rest.
    With --profile, one more step per framework runs under torch.profiler (its time is not counted).
 5. Markdown table on stdout; <out>.md, <out>.csv (a row per framework, with versions and the command) and
    <out>.json (settings, versions, command, load averages, every step record) under docs/.

--use-vllm true (in the vLLM venv, README "vLLM") runs our trainer twice side by side: `ours` samples with
Hugging Face generate, `ours-vllm` with a colocated vLLM engine (grpo.vllm_engine), both from the same seed,
weights and prompts. The engine's start-up is measured once, outside the steps (engine_start_s); each step's
weight sync is part of its time (sync_s), and its update includes the old-log-prob forward vLLM sampling needs.

Token counts: both sample with EOS on (as in training), so lengths differ from step to step. tokens/s
(completion tokens generated ÷ step seconds) is the length-independent speed; s/step is the latency at the
lengths actually sampled (mean length in the table).

Glossary (memory: Linux VmHWM, see PeakRSS; all steps, warm-up included):
    s_step, s_min, s_max    median, min and max seconds per step over the timed steps
    tokens_s                median completion tokens generated per second of step
    gen_s, score_s, update_s median seconds in sampling, reward functions, loss+backward+optimiser
                            (TRL: gen = `_generate_and_score_completions` − reward time)
    len                     mean completion length (tokens, EOS included)
    peak_rss_mb             process high-water mark, model loading included
    steps_peak_rss_mb       high-water mark during the steps only
    gen_peak_mb             high-water mark within sampling + reward of step 1 (later steps start from the
                            heap the allocator kept after an update, so only step 1 isolates sampling)
    update_peak_mb          high-water mark within the update
    engine_start_s          ours-vllm: seconds to start the vLLM engine (once per run, not in any step)
    sync_s                  ours-vllm: median seconds pushing the trainer's weights into vLLM per step
    load1                   mean 1-minute load average during the steps (2 cores: > 2 means others ran too)
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grpo.config import (UserError, at_least, cli_main, parse_settings, require,  # noqa: E402
                         settings_from_dict)
from grpo.measure import PeakRSS, package_versions, proc_status_mb  # noqa: E402
from grpo.models import use_bf16  # noqa: E402
from grpo.run import markdown_table, write_report  # noqa: E402
from grpo.settings import GRPOSettings  # noqa: E402
from grpo.vllm_engine import vllm_installed  # noqa: E402


@dataclass
class BenchSettings(GRPOSettings):
    prompts_per_step: int = 2
    """B: prompts per generation batch (small: this runs on a 2-core CPU)"""
    max_completion_length: int = 64
    """L: new tokens per completion at most"""
    steps: int = 5
    """timed steps per framework"""
    warmup: int = 1
    """untimed steps run first (lazy initialisation, torch.compile)"""
    frameworks: list[str] = field(default_factory=lambda: ["ours", "trl"])
    """which trainers to run: ours, trl, ours-vllm (ours sampling with vLLM); --use-vllm true: ours, ours-vllm"""
    schedule: Literal["interleaved", "sequential"] = "interleaved"
    """interleaved: one step of each in turn (ABBA); sequential: all steps of one, then the other"""
    threads: int = 1
    """torch threads per worker (0 = torch's default); 1 because on a shared 2-core CPU a second OpenMP
    thread waits on a busy core: small matmuls measured 25× slower with 2 threads at load average 5"""
    out: str = "docs/bench_grpo_step"
    """output prefix: <out>.md, <out>.csv, <out>.json ('' = print only)"""
    profile: bool = False
    """after the timed steps, one more step per framework under torch.profiler (not timed): top operators"""
    save_adapters: str = ""
    """folder: each framework saves its adapter as <framework>/step-<k> every eval_steps steps (warm-up
    included) and after the last, untimed (scripts/compare_trl.py evaluates them; '' = none)"""

    def validate(self) -> None:
        """Ranges, and what TRL can run, checked before any worker starts (grpo.config [D9])."""
        at_least(self, "steps", 1)
        at_least(self, "warmup", 0)
        at_least(self, "threads", 0, why="0 = torch's default")
        if self.use_vllm and self.frameworks == ["ours", "trl"]:  # the default: compare the two samplers
            self.frameworks = ["ours", "ours-vllm"]
        require(self, "frameworks", bool(self.frameworks) and set(self.frameworks) <= {"ours", "trl", "ours-vllm"},
                "must be a non-empty subset of ours, trl, ours-vllm")
        require(self, "frameworks", "ours-vllm" not in self.frameworks or vllm_installed(),
                f"ours-vllm needs vLLM, not installed in this Python ({sys.executable}); run the benchmark with "
                ".venv-vllm/bin/python (VLLM=1 bash scripts/setup_env.sh)")
        if "trl" in self.frameworks:
            for key, value in NOT_IN_TRL.items():
                require(self, key, getattr(self, key) == value, f"must be {value!r} with trl (no counterpart in TRL)")
            n = self.prompts_per_step * self.num_generations
            require(self, "micro_batch_size", n % self.micro_batch_size == 0,
                    f"must divide B·G = {n} with trl (TRL accumulates whole micro-batches)")


# Settings TRL has no counterpart for: they must stay at these values.
NOT_IN_TRL = {"dynamic_sampling": "off", "overlong_cache_length": 0, "stop_strings": [], "optimizer": "adamw",
              "token_normalizer": "all_tokens", "adv_eps": 1e-4, "load_in_4bit": False}


# ------------------------------------------------------------------------------------- worker helpers
PEAK = PeakRSS()


def _phase(fn, key: str, into: dict):
    """fn with PEAK reset before and read after: into[key] = its peak RSS in MB."""
    def wrapped(*a, **k):
        PEAK.start()
        out = fn(*a, **k)
        into[key] = PEAK.read()
        return out

    return wrapped


def _prompt_digest(prompts: list) -> str:
    return hashlib.sha256(json.dumps(sorted({json.dumps(p) for p in prompts})).encode()).hexdigest()[:12]


def _run_steps(s: BenchSettings) -> int:
    return s.warmup + s.steps + int(s.profile)


class _Profiler:
    """torch.profiler around one step; `table()` gives the top operators by self CPU time."""

    def __init__(self):
        import torch

        PEAK.freeze()
        self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])

    def __enter__(self):
        self.prof.__enter__()
        return self

    def __exit__(self, *exc):
        self.prof.__exit__(*exc)

    def table(self, rows: int = 15) -> dict:
        ops = sorted(self.prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
        total = sum(e.self_cpu_time_total for e in ops) or 1.0
        return {e.key: {"self_s": e.self_cpu_time_total / 1e6, "share": e.self_cpu_time_total / total,
                        "calls": e.count} for e in ops[:rows]}


def _save_adapter(s: BenchSettings, framework: str, model, tok, step: int, total: int) -> None:
    """--save-adapters: the adapter after `step` as <save_adapters>/<framework>/step-<k>, every eval_steps and
    after the last step (outside the timed region)."""
    if s.save_adapters and ((s.eval_steps and step % s.eval_steps == 0) or step == total):
        from grpo.checkpoint import save_model

        save_model(model, tok, Path(s.save_adapters) / framework / f"step-{step:06d}", base_name=s.model)


def _build_common(s: BenchSettings):
    """seed → task → model + LoRA, identically in both workers; the hash of the initial trainable weights."""
    import torch

    from grpo.models import load_model_from_settings
    from grpo.run import seed_everything

    if s.threads:
        torch.set_num_threads(s.threads)
    seed_everything(s.seed)
    task = s.load_task(limit=s.dataset_limit)
    model, tok = load_model_from_settings(s)
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        if p.requires_grad:
            h.update(name.encode() + p.detach().cpu().numpy().tobytes())
    return task, model, tok, h.hexdigest()[:12]


def _ours_worker(s: BenchSettings, emit, commands, *, use_vllm: bool = False) -> None:
    from grpo.trainer import GRPOTrainer

    s.use_vllm = use_vllm  # the framework decides (ours: HF generate; ours-vllm: vLLM)
    task, model, tok, weights = _build_common(s)
    total = _run_steps(s)
    params = [p for p in model.parameters() if p.requires_grad]
    opt, sched = s.make_optimizer(params, total_steps=total)
    engine, started = None, {}
    if use_vllm:
        from grpo.models import resolve_model_path
        from grpo.vllm_engine import VLLMEngine, model_dtype

        engine = VLLMEngine.start(s, resolve_model_path(s.model, cache_dir=s.model_cache_dir or None),
                                  dtype=model_dtype(s.dtype, bf16=use_bf16(next(model.parameters()).device, s.bf16)),
                                  seed=s.seed)
        started = {"engine_start_s": engine.start_seconds}
    trainer = GRPOTrainer(s, model, tok, task, opt, sched, engine=engine)
    seen: dict[str, str] = {}
    sample = trainer._sample

    def observed_sample(n):  # records which prompts a step draws; behaviour unchanged
        rows, rollout = sample(n)
        seen["prompts"] = _prompt_digest([r["prompt"] for r in rows])
        return rows, rollout

    trainer._sample = observed_sample
    trainer._collect = _phase(trainer._collect, "gen_peak_mb", seen)
    trainer._update = _phase(trainer._update, "update_peak_mb", seen)
    N = s.prompts_per_step * s.num_generations
    PEAK.begin_steps()
    emit({"ready": True, "weights": weights, "rss_mb": proc_status_mb("VmRSS"), **started})
    for i in range(total):
        commands()
        profiler = _Profiler() if s.profile and i == total - 1 else None
        t0 = time.perf_counter()
        if profiler is None:
            m = trainer.step()
        else:
            with profiler:
                m = trainer.step()
        seconds = time.perf_counter() - t0
        _save_adapter(s, "ours-vllm" if use_vllm else "ours", model, tok, i + 1, total)
        emit({**({"profile": profiler.table()} if profiler else {}),
              "seconds": seconds, "tokens": m["completion_length"] * N, "reward": m["reward"], "gen_s": m["time/generate"], "score_s": m["time/score"], "update_s": m["time/update"],
              "sync_s": m.get("time/sync_weights", 0.0),
              "len": m["completion_length"], "truncated_frac": m["truncated_frac"], "prompts": seen["prompts"],
              "gen_peak_mb": seen["gen_peak_mb"], "update_peak_mb": seen["update_peak_mb"],
              "rss_mb": proc_status_mb("VmRSS"), "load1": os.getloadavg()[0]})


def _trl_reward(fn, name: str, columns: list[str]):
    """Our reward function under TRL's calling convention, given exactly what our trainer gives it:
    prompts as chat messages, completions as [{"role": "assistant", "content": prompt_suffix + text}]."""
    def reward(prompts, completions, **kw):
        replies = [[{"role": "assistant", "content": sfx + c}] for sfx, c in zip(kw["prompt_suffix"], completions)]
        return fn(kw["prompt_messages"], replies, **{k: kw[k] for k in columns})

    reward.__name__ = name
    return reward


def _trl_worker(s: BenchSettings, emit, commands) -> None:
    import datasets
    import trl
    from transformers import TrainerCallback

    from grpo.rollout import encode_prompts, eos_token_ids
    from grpo.trainer import PromptSampler

    task, model, tok, weights = _build_common(s)
    total, N = _run_steps(s), s.prompts_per_step * s.num_generations  # micro_batch_size divides N (validate)
    order = PromptSampler(len(task.rows), s.seed).next(s.prompts_per_step * total)  # our data order
    columns = [k for k in task.rows[0] if k != "prompt"]  # what our trainer passes as **columns
    rows = [{**{k: task.rows[i][k] for k in columns}, "prompt_messages": task.rows[i]["prompt"],
             "prompt_suffix": task.rows[i].get("prompt_suffix", ""),  # rows may have none (drill)
             "prompt": tok.apply_chat_template(task.rows[i]["prompt"], tokenize=False, add_generation_prompt=True)
             + task.rows[i].get("prompt_suffix", "")} for i in order]  # the text our encode_prompts builds
    out_dir = tempfile.mkdtemp(prefix="bench-trl-")  # TRL insists on one; nothing is saved there
    sched = {"constant": "constant_with_warmup" if s.warmup_ratio else "constant"}.get(s.lr_scheduler, s.lr_scheduler)
    args = trl.GRPOConfig(
        output_dir=out_dir, report_to=[], save_strategy="no", logging_steps=1,
        disable_tqdm=True, use_cpu=str(next(model.parameters()).device) == "cpu", seed=s.seed,
        bf16=use_bf16(next(model.parameters()).device, s.bf16),
        max_steps=total, shuffle_dataset=False, activation_checkpointing=s.gradient_checkpointing,
        per_device_train_batch_size=s.micro_batch_size, gradient_accumulation_steps=N // s.micro_batch_size,
        num_generations=s.num_generations, max_completion_length=s.max_completion_length,
        temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, min_p=s.min_p or None,
        loss_type=s.loss_type, scale_rewards=s.scale_rewards, epsilon=s.epsilon, epsilon_high=s.epsilon_high,
        delta=s.delta, importance_sampling_level=s.importance_sampling_level, beta=s.beta,
        use_bias_correction_kl=s.use_bias_correction_kl, off_policy_mask_threshold=s.off_policy_mask_threshold,
        sapo_temperature_pos=s.sapo_temperature_pos, sapo_temperature_neg=s.sapo_temperature_neg,
        vespo_k_pos=s.vespo_k_pos, vespo_lambda_pos=s.vespo_lambda_pos, vespo_k_neg=s.vespo_k_neg,
        vespo_lambda_neg=s.vespo_lambda_neg, num_iterations=s.num_iterations,
        mask_truncated_completions=s.mask_truncated_completions, top_entropy_quantile=s.top_entropy_quantile,
        entropy_coef=s.entropy_coef, reward_weights=s.reward_weights or None,
        learning_rate=s.learning_rate, weight_decay=s.weight_decay, optim="adamw_torch", lr_scheduler_type=sched,
        warmup_steps=math.ceil(s.warmup_ratio * total), max_grad_norm=s.max_grad_norm)
    state: dict[str, Any] = {"pending": None, "started": False}

    class LockStep(TrainerCallback):
        def on_step_begin(self, args, st, control, **kw):
            self._flush()
            commands()
            if s.profile and st.global_step == total - 1:
                state["profiler"] = _Profiler().__enter__()
            PEAK.start()
            state.update(t0=time.perf_counter(), score_s=0.0)

        def on_step_end(self, args, st, control, **kw):
            seconds = time.perf_counter() - state["t0"]
            profiler = state.pop("profiler", None)
            if profiler is not None:
                profiler.__exit__(None, None, None)
            gen_score = state["gen_score_s"]
            state["pending"] = {**({"profile": profiler.table()} if profiler else {}),
                "seconds": seconds, "tokens": state["tokens"], "reward": trainer._metrics["train"]["reward"][-1],
                "gen_s": gen_score - state["score_s"], "score_s": state["score_s"], "update_s": seconds - gen_score,
                "len": state["tokens"] / N, "truncated_frac": trainer._metrics["train"]["completions/clipped_ratio"][-1],
                "prompts": state["prompts"], "gen_peak_mb": state["gen_peak_mb"], "update_peak_mb": PEAK.read(),
                "rss_mb": proc_status_mb("VmRSS"), "load1": os.getloadavg()[0]}
            _save_adapter(s, "trl", model, tok, st.global_step, total)

        def on_train_end(self, args, st, control, **kw):
            self._flush()

        def _flush(self):  # reply only once TRL's own post-step logging is done, so the worker is idle after
            if not state["started"]:
                state["started"] = True
                PEAK.begin_steps()
                emit({"ready": True, "weights": weights, "rss_mb": proc_status_mb("VmRSS"), **checks})
            elif state["pending"] is not None:
                emit(state.pop("pending"))
                state["pending"] = None

    trainer = trl.GRPOTrainer(model=model, reward_funcs=[_trl_reward(f, n, columns) for f, n in
                                                         zip(task.reward_funcs, task.reward_names)],
                              args=args, train_dataset=datasets.Dataset.from_list(rows), processing_class=tok,
                              callbacks=[LockStep()])
    generate_and_score, calculate_rewards = trainer._generate_and_score_completions, trainer._calculate_rewards

    def observed_generate_and_score(inputs):  # timing and token counts only; behaviour unchanged
        t0 = time.perf_counter()
        out = generate_and_score(inputs)
        state.update(gen_score_s=time.perf_counter() - t0, tokens=float(out["completion_mask"].sum()),
                     prompts=_prompt_digest([x["prompt_messages"] for x in inputs]), gen_peak_mb=PEAK.read())
        PEAK.start()  # the rest of the step is the update
        return out

    def observed_rewards(*a, **k):
        t0 = time.perf_counter()
        out = calculate_rewards(*a, **k)
        state["score_s"] += time.perf_counter() - t0
        return out

    trainer._generate_and_score_completions, trainer._calculate_rewards = observed_generate_and_score, observed_rewards
    first = rows[:s.prompts_per_step]
    ours_ids, ours_mask = encode_prompts(tok, [r["prompt_messages"] for r in first],
                                         generation_suffix=first[0].get("prompt_suffix", ""))
    theirs = trainer._tokenize_prompts([r["prompt"] for r in first])[0]
    checks = {"prompt_ids_match": [ids[m].tolist() for ids, m in zip(ours_ids, ours_mask)] == [list(t) for t in theirs],
              "eos_match": sorted(trainer.eos_token_ids) == sorted(eos_token_ids(model, tok))}
    trainer.train()
    shutil.rmtree(out_dir, ignore_errors=True)


def worker_main(name: str, settings_json: str) -> None:
    proto = os.fdopen(os.dup(1), "w", buffering=1)  # protocol channel: the original stdout
    os.dup2(2, 1)  # everything libraries print goes to stderr
    sys.stdout = sys.stderr

    def emit(obj: dict) -> None:
        proto.write(json.dumps(obj) + "\n")

    def commands() -> None:
        if sys.stdin.readline().strip() != "step":
            sys.exit(0)

    s = settings_from_dict(BenchSettings, json.loads(settings_json))
    if name == "trl":
        _trl_worker(s, emit, commands)
    else:
        _ours_worker(s, emit, commands, use_vllm=name == "ours-vllm")
    if sys.stdin.readline().strip() == "exit":
        emit(PEAK.final())


# ------------------------------------------------------------------------------------- driver
class Worker:
    def __init__(self, name: str, s: BenchSettings, log_dir: Path):
        self.name, self.log = name, log_dir / f"{name}.log"
        self.proc = subprocess.Popen([sys.executable, __file__, "--_worker", name, json.dumps(asdict(s))],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(self.log, "w"),
                                     text=True, bufsize=1, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})

    def read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            tail = self.log.read_text()[-3000:]
            raise UserError(f"worker {self.name} stopped (exit {self.proc.wait()}); log {self.log}:\n{tail}")
        return json.loads(line)

    def send(self, cmd: str) -> dict:
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self.read()


def run(s: BenchSettings) -> dict[str, Any]:
    """Start the workers, check they match, run the steps in lock-step; every record, summaries per framework."""
    log_dir = Path(tempfile.mkdtemp(prefix="bench-grpo-step-"))
    workers = {n: Worker(n, s, log_dir) for n in s.frameworks}  # set-up runs concurrently (not timed)
    ready = {n: w.read() for n, w in workers.items()}
    rss = ", ".join(f"{n}: {r['rss_mb']:.0f} MB" for n, r in ready.items())
    print(f"workers ready ({rss}); logs in {log_dir}", file=sys.stderr)
    if len({r["weights"] for r in ready.values()}) != 1:
        raise UserError(f"initial trainable weights differ: {ready}")
    if "trl" in ready and not (ready["trl"]["prompt_ids_match"] and ready["trl"]["eos_match"]):
        raise UserError(f"TRL tokenises the prompts or ends completions differently: {ready['trl']}")
    total, names = s.warmup + s.steps, list(workers)
    if s.schedule == "interleaved":
        order = [(n, i) for i in range(total) for n in (names if i % 2 == 0 else names[::-1])]  # ABBA
    else:
        order = [(n, i) for n in names for i in range(total)]
    order += [(n, total) for n in names] if s.profile else []
    records, profiles = [], {}
    for n, i in order:
        t0 = time.perf_counter()
        rec = workers[n].send("step")
        if "profile" in rec:
            profiles[n] = rec.pop("profile")
            print(f"{n}: top operators of one profiled step ({rec['seconds']:.1f} s, not in the timings)\n"
                  + "\n".join(f"  {v['share']:6.1%} {v['self_s']:8.2f} s {v['calls']:7d}  {k}"
                               for k, v in profiles[n].items()), file=sys.stderr)
            continue
        records.append({"framework": n, "step": i + 1, "warmup": i < s.warmup,
                        "wall_s": time.perf_counter() - t0, **rec})
        print(f"{n:>4} step {i + 1}/{total}: {rec['seconds']:.1f} s, {rec['tokens']:.0f} tokens, "
              f"reward {rec['reward']:.3f}, load {rec['load1']:.2f}", file=sys.stderr)
    digests = {(r["step"], r["prompts"]) for r in records}
    if len(digests) != total:
        raise UserError("the frameworks drew different prompts at the same step")
    finals = {n: w.send("exit") for n, w in workers.items()}
    for w in workers.values():
        w.proc.wait()
    shutil.rmtree(log_dir, ignore_errors=True)
    summary = {n: summarise(n, records, finals[n]) for n in names}
    for n in names:
        summary[n]["engine_start_s"] = ready[n].get("engine_start_s", 0.0)
    return {"records": records, "profiles": profiles, "summary": summary}


def summarise(name: str, records: list[dict], final: dict) -> dict[str, Any]:
    every = [r for r in records if r["framework"] == name]  # memory: all steps; step 1 starts from a clean heap
    rs = [r for r in every if not r["warmup"]]
    med = lambda key: statistics.median(r[key] for r in rs)  # noqa: E731
    return {"framework": name, "steps": len(rs), "s_step": med("seconds"),
            "s_min": min(r["seconds"] for r in rs), "s_max": max(r["seconds"] for r in rs),
            "tokens_s": statistics.median(r["tokens"] / r["seconds"] for r in rs), "gen_s": med("gen_s"),
            "score_s": med("score_s"), "update_s": med("update_s"),
            "sync_s": statistics.median(r.get("sync_s", 0.0) for r in rs), "len": statistics.mean(r["len"] for r in rs),
            "gen_peak_mb": every[0]["gen_peak_mb"], "update_peak_mb": max(r["update_peak_mb"] for r in every),
            "peak_rss_mb": final["peak_rss_mb"], "steps_peak_rss_mb": final["steps_peak_rss_mb"],
            "load1": statistics.mean(r["load1"] for r in rs)}


COLUMNS = [("framework", "{}"), ("steps", "{}"), ("s_step", "{:.2f}"), ("s_min", "{:.2f}"), ("s_max", "{:.2f}"),
           ("tokens_s", "{:.1f}"), ("gen_s", "{:.2f}"), ("sync_s", "{:.2f}"), ("score_s", "{:.3f}"),
           ("update_s", "{:.2f}"), ("engine_start_s", "{:.1f}"),
           ("len", "{:.1f}"), ("peak_rss_mb", "{:.0f}"), ("steps_peak_rss_mb", "{:.0f}"), ("gen_peak_mb", "{:.0f}"),
           ("update_peak_mb", "{:.0f}"), ("load1", "{:.2f}")]


def markdown(summary: dict[str, dict], title: str) -> str:
    lines = [markdown_table(title, summary.values(), COLUMNS).rstrip("\n")]
    if {"ours", "trl"} <= set(summary):
        o, t = summary["ours"], summary["trl"]
        lines += ["", f"ours ÷ TRL: time per step {o['s_step'] / t['s_step']:.2f}× (target ≤ 0.6), tokens/s "
                      f"{o['tokens_s'] / t['tokens_s']:.2f}×, peak RSS {o['peak_rss_mb'] / t['peak_rss_mb']:.2f}× "
                      f"(target ≤ 0.8), peak RSS during steps {o['steps_peak_rss_mb'] / t['steps_peak_rss_mb']:.2f}×"]
    if {"ours", "ours-vllm"} <= set(summary):
        o, v = summary["ours"], summary["ours-vllm"]
        saved = o["s_step"] - v["s_step"]
        payback = (f"the engine's start ({v['engine_start_s']:.0f} s) is paid back after "
                   f"{math.ceil(v['engine_start_s'] / saved)} steps" if saved > 0 else "vLLM is not faster per step here")
        lines += ["", f"vLLM ÷ HF sampling: time per step {v['s_step'] / o['s_step']:.2f}×, sampling "
                      f"{(v['gen_s'] + v['sync_s']) / o['gen_s']:.2f}× (weight sync included), tokens/s "
                      f"{v['tokens_s'] / o['tokens_s']:.2f}×; {payback}"]
    return "\n".join(lines) + "\n"


def main() -> None:
    s = parse_settings(BenchSettings, description=__doc__)
    command = "python " + " ".join([os.path.relpath(__file__)] + sys.argv[1:])
    load_before = os.getloadavg()
    result = run(s)
    info = {"command": command, "versions": package_versions(), "settings": asdict(s), "loadavg_before": load_before,
            "loadavg_after": os.getloadavg()}
    title = (f"GRPO step, {s.model} (LoRA {s.use_lora}), B={s.prompts_per_step} G={s.num_generations} "
             f"L={s.max_completion_length} micro={s.micro_batch_size}, {s.steps} timed steps after {s.warmup} "
             f"warm-up, {s.schedule}; load avg before/after {load_before[0]:.2f}/{info['loadavg_after'][0]:.2f} "
             f"on {os.cpu_count()} CPUs\n\n`{command}`")
    table = markdown(result["summary"], title)
    print(table)
    if s.out:
        write_report(s.out, text=table, rows=result["summary"].values(), columns=[c for c, _ in COLUMNS],
                     csv_extra={"versions": json.dumps(info["versions"]), "command": command},
                     payload={**info, **result})
        print(f"wrote {Path(s.out).with_suffix('.md')}, .csv, .json", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--_worker":
        worker_main(sys.argv[2], sys.argv[3])
    else:
        cli_main(main)
