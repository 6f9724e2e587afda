"""Settings of a GRPO run (scripts/train_grpo.py, scripts/bench_grpo_step.py, scripts/compare_trl.py).

Names follow TRL's GRPOConfig where the concept is the same (num_generations, epsilon, epsilon_high,
beta, loss_type, scale_rewards, num_iterations, top_entropy_quantile, mask_truncated_completions,
importance_sampling_level, delta, sapo_temperature_*, vespo_k_*, vespo_lambda_*, off_policy_mask_threshold,
use_bias_correction_kl, use_vllm and the vllm_* settings), so a TRL config translates key for key.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import rewards
from grpo.config import above, at_least, invalid, require, within
from grpo.distributed import env_world_size
from grpo.loss import CONSTANT_NORMALISER, LEVEL_OF, LOSS_TYPES
from grpo.models import ModelSettings
from grpo.optim import OptimSettings
from grpo.run import RunSettings
from grpo.tasks import PRESET_OF_TASK
from grpo.vllm_engine import VLLMSettings


def check_sampling(settings) -> None:
    """The sampling settings GRPO and SEGA share (temperature, top_p, top_k, min_p, stop_strings) [grpo.config D9]."""
    above(settings, "temperature", 0)
    within(settings, "top_p", 0, 1, low_open=True, why="1 = off")
    at_least(settings, "top_k", 0, why="0 = off")
    within(settings, "min_p", 0, 1, why="0 = off")
    require(settings, "stop_strings", all(settings.stop_strings),
            "must not hold an empty string (it would end every completion)")


@dataclass
class PromptLengthSettings:
    """How long a prompt may be (grpo.data.prompts): GRPO, SEGA and evaluation share these."""

    max_prompt_length: Optional[int] = None
    """most prompt tokens the model sees (TRL's name); null = the model's positions − the completion length"""
    prompt_overflow: Literal["truncate_left", "reject"] = "truncate_left"
    """a longer prompt: keep its last max_prompt_length tokens (as TRL), or drop its row before training (counted)"""

    def validate(self) -> None:
        at_least(self, "max_prompt_length", 1, why="null = the model's positions − the completion length")


@dataclass
class PromptSettings(PromptLengthSettings):
    """How a task's prompts are presented: the system message and the text that primes the reply."""

    prompt_suffix: Optional[str] = None
    """text after the generation prompt that primes the reply (e.g. "<reasoning>\n"); null = the task's own"""
    system_prompt: Optional[str] = None
    """system message replacing the task's own (e.g. one with a worked example); null = the task's own"""

    def task_rows(self, task: str, *, source: str = "", split: str = "train", limit: Optional[int] = None):
        """The rows of `grpo.tasks.load_task(task, ...)` with these prompt settings."""
        from grpo.tasks import load_task

        return load_task(task, source=source, split=split, limit=limit, prompt_suffix=self.prompt_suffix,
                         system_prompt=self.system_prompt).rows


@dataclass
class TaskSettings(PromptSettings, ModelSettings):
    """The task a script trains or evaluates on: its data, prompts and reward functions."""

    task: str = "arithmetic"
    """arithmetic (bundled default), drill, gsm8k, reasoncheck, text_to_sql or score_model (grpo/tasks.py)"""
    dataset: str = ""
    """data source overriding the task's default: a hub id, a .jsonl/.json file or a folder"""
    reward_funcs: list[str] = field(default_factory=list)
    """reward functions by name (rewards.REWARD_FUNCTIONS) or module:function; empty = the task's preset"""
    reward_weights: list[float] = field(default_factory=list)
    """one weight per reward function; empty = all 1.0"""
    non_finite_rewards: Literal["error", "none"] = "error"
    """a reward of ±inf: stop with an error naming the function and row, or treat it as None (counted)"""

    def validate(self) -> None:
        """The task and its reward functions, checked before any data loads (grpo.config [D9])."""
        require(self, "task", self.task in PRESET_OF_TASK, f"unknown task; valid tasks: {', '.join(PRESET_OF_TASK)}")
        unknown = [n for n in self.reward_funcs if ":" not in n and n not in rewards.REWARD_FUNCTIONS]
        if unknown:
            raise invalid("reward_funcs", self.reward_funcs, f"unknown reward function {unknown[0]!r}; valid names: "
                          f"{', '.join(sorted(rewards.REWARD_FUNCTIONS))}, or module:function")
        names = self.reward_funcs or rewards.PRESETS[PRESET_OF_TASK[self.task]]
        require(self, "reward_weights", not self.reward_weights or len(self.reward_weights) == len(names),
                f"must have one weight for each of the {len(names)} reward functions "
                f"({'' if self.reward_funcs else f'the preset of task {self.task}: '}{', '.join(names)}), "
                "or be empty for all 1.0")

    def load_task(self, *, split: str = "train", limit: Optional[int] = None):
        """`grpo.tasks.load_task` with these settings."""
        from grpo.tasks import load_task

        return load_task(self.task, source=self.dataset, split=split, limit=limit,
                         reward_funcs=self.reward_funcs or None, prompt_suffix=self.prompt_suffix,
                         system_prompt=self.system_prompt)


@dataclass
class GRPOSettings(RunSettings, OptimSettings, VLLMSettings, TaskSettings):
    dataset_limit: Optional[int] = None
    """use only the first N rows of the dataset"""
    # --- sampling
    prompts_per_step: int = 2
    """B: prompts per generation batch, over all ranks"""
    num_generations: int = 4
    """G: completions sampled per prompt"""
    max_completion_length: int = 64
    """L: new tokens per completion at most"""
    temperature: float = 1.0
    """sampling temperature T; log-probs in the loss are computed at the same T"""
    top_p: float = 1.0
    """nucleus sampling mass (1.0 = off)"""
    top_k: int = 0
    """top-k sampling (0 = off)"""
    min_p: float = 0.0
    """min-p sampling (0 = off)"""
    stop_strings: list[str] = field(default_factory=list)
    """extra strings that end a completion (the task may add its own)"""
    sampler_dtype: Literal["float32", "bfloat16"] = "float32"
    """dtype of the linear layers in our decoding loop's steps: bfloat16 halves the weight bytes read per token (CPUs
    with avx512_bf16, GPUs); a different distribution from the fp32 policy, so the sampler–trainer IS correction
    applies (vllm_importance_sampling_*; ALGORITHMS.md §5; grpo.decode_linears [G9])"""
    # --- objective
    loss_type: Literal["grpo", "dapo", "dr_grpo", "bnpo", "luspo", "cispo", "sapo", "vespo"] = "dapo"
    """surrogate + aggregation (ALGORITHMS.md §2, §2b): clipped grpo, dapo, dr_grpo, bnpo, luspo; cispo sapo vespo"""
    scale_rewards: Literal["group", "batch", "none"] = "group"
    """advantage std: per group, over the batch, or none (Dr. GRPO)"""
    adv_eps: float = 1e-4
    """ε added to the std of the rewards"""
    epsilon: float = 0.2
    """ε_low: lower clip of the ratio"""
    epsilon_high: float = 0.28
    """ε_high: upper clip of the ratio (DAPO clip-higher; 0.2 = symmetric); cispo: the absolute cap ε_max (try 5.0)"""
    delta: Optional[float] = None
    """two-sided clipping: cap the unclipped ratio at δ (None = off)"""
    importance_sampling_level: Literal["token", "sequence"] = "token"
    """token ratio (GRPO) or sequence ratio (GSPO); luspo needs sequence, cispo and vespo token"""
    sapo_temperature_pos: float = 1.0
    """sapo: temperature τ of the soft gate σ(τ(ρ − 1))·4/τ for tokens with A > 0"""
    sapo_temperature_neg: float = 1.05
    """sapo: temperature τ for tokens with A ≤ 0 (larger than τ_pos: the gate closes faster off-policy)"""
    vespo_k_pos: float = 2.0
    """vespo: power k of the weight φ(w) = e^λ·w^k·e^(−λw) for A ≥ 0 (down-weights sequences with w < 1)"""
    vespo_lambda_pos: float = 3.0
    """vespo: decay λ of φ for A ≥ 0 (down-weights sequences with w > 1)"""
    vespo_k_neg: float = 3.0
    """vespo: power k of φ for A < 0"""
    vespo_lambda_neg: float = 2.0
    """vespo: decay λ of φ for A < 0"""
    off_policy_mask_threshold: Optional[float] = None
    """DeepSeek-V3.2 mask δ: drop sequences with A < 0 whose mean lp_old − lp_θ exceeds δ (null = off; e.g. 0.5)"""
    beta: float = 0.0
    """k3 KL coefficient β; 0 loads no reference at all"""
    use_bias_correction_kl: bool = False
    """weight the per-token KL by ρ (DeepSeek-V3.2; TRL's default is true, ours DeepSeekMath's plain k3)"""
    num_iterations: int = 1
    """μ: optimiser passes per generation batch"""
    mask_truncated_completions: bool = False
    """completions that hit max_completion_length without EOS contribute nothing (DAPO)"""
    overlong_cache_length: int = 0
    """soft overlong punishment: the last L_cache tokens before L are penalised linearly (0 = off)"""
    top_entropy_quantile: float = 1.0
    """ρ: train only on the ceil(ρ·N) highest-entropy tokens (forking tokens; 1.0 = all)"""
    token_normalizer: Literal["all_tokens", "selected_tokens"] = "all_tokens"
    """normaliser with forking tokens: all tokens (paper, TRL) or selected tokens (official code)"""
    entropy_coef: float = 0.0
    """entropy bonus c: adds −c·mean(H)"""
    dynamic_sampling: Literal["off", "drop", "resample"] = "off"
    """zero-variance groups: keep, drop from the update, or resample new prompts in their place"""
    max_resample_rounds: int = 3
    """dynamic_sampling=resample: extra generation batches at most per step"""
    # --- optimisation (and OptimSettings: learning_rate, weight_decay, optimizer, lr_scheduler, ...)
    max_steps: int = 30
    """generation batches to train on"""
    micro_batch_size: int = 8
    """sequences per forward/backward pass (gradient accumulation over the batch)"""
    # --- held-out evaluation during training (grpo.evaluation; outputs/<run>/eval.jsonl)
    eval_steps: int = 0
    """evaluate on held-out rows before the first step, every N steps and after the last (0 = off)"""
    eval_split: str = "test"
    """the task's split to evaluate on (rows training never sees)"""
    eval_num_examples: Optional[int] = None
    """the first N rows of eval_split (null = all, as TRL evaluates its whole eval_dataset)"""
    eval_batch_size: int = 32
    """prompts decoded together in an evaluation (greedy, one completion each)"""
    eval_max_new_tokens: Optional[int] = None
    """most tokens per evaluation completion (null = max_completion_length)"""
    # --- run (and RunSettings: seed, logging_steps, save_steps, save_total_limit, resume, tensorboard)
    run_name: str = "grpo"
    """run folder: a name under outputs/ ($GRPO_OUTPUT_ROOT) or a path containing '/'"""

    def validate(self) -> None:
        """Ranges and the rules between settings, checked before anything loads (grpo.config [D9])."""
        at_least(self, "dataset_limit", 1, why="null = every row")
        # sampling
        at_least(self, "prompts_per_step", 1)
        world = env_world_size()
        require(self, "prompts_per_step", self.prompts_per_step % world == 0,
                f"must be divisible by the number of processes, WORLD_SIZE = {world} (each samples an equal share)")
        at_least(self, "num_generations", 2, why="the group baseline needs two completions per prompt")
        at_least(self, "max_completion_length", 1)
        check_sampling(self)
        require(self, "sampler_dtype", self.sampler_dtype == "float32" or self.dtype in ("float32", "fp32"),
                f"bfloat16 needs float32 weights, not dtype = {self.dtype} (the sampler would read no fewer bytes)")
        # objective
        at_least(self, "adv_eps", 0)
        within(self, "epsilon", 0, 1, why="the ratio's lower clip is 1 - epsilon")
        at_least(self, "epsilon_high", 0)
        require(self, "delta", self.delta is None or self.delta >= 1 + self.epsilon_high,
                f"must be >= 1 + epsilon_high = {1 + self.epsilon_high:g}, or null = off (grpo.loss [D5])")
        surrogate = LOSS_TYPES[self.loss_type][0]
        require(self, "delta", self.delta is None or surrogate == "clipped",
                f"must be null with loss_type = {self.loss_type}: δ caps the clipped surrogate of grpo, dapo, "
                "dr_grpo, bnpo and luspo")
        require(self, "epsilon_high", self.loss_type != "cispo" or self.epsilon_high >= 1,
                "must be >= 1 with loss_type = cispo, where it is the absolute cap ε_max on the ratio (ScaleRL "
                "recommends 5.0); a cap below 1 would scale down every on-policy token (grpo.surrogates [D1])")
        level = LEVEL_OF.get(self.loss_type)
        require(self, "importance_sampling_level", level in (None, self.importance_sampling_level),
                f"must be {level} with loss_type = {self.loss_type} (grpo.loss [D12])")
        above(self, "sapo_temperature_pos", 0)
        above(self, "sapo_temperature_neg", 0)
        at_least(self, "vespo_k_pos", 0)
        at_least(self, "vespo_k_neg", 0)
        above(self, "vespo_lambda_pos", 0, why="φ must decay for large w")
        above(self, "vespo_lambda_neg", 0, why="φ must decay for large w")
        at_least(self, "off_policy_mask_threshold", 0, why="null = off")
        at_least(self, "beta", 0, why="0 = no KL term")
        at_least(self, "num_iterations", 1)
        require(self, "overlong_cache_length", 0 <= self.overlong_cache_length <= self.max_completion_length,
                f"must be in [0, max_completion_length = {self.max_completion_length}] (0 = off)")
        within(self, "top_entropy_quantile", 0, 1, low_open=True, why="1 = every token")
        require(self, "token_normalizer",
                self.loss_type not in CONSTANT_NORMALISER or self.token_normalizer == "all_tokens",
                f"must be all_tokens with loss_type = {self.loss_type}, whose normaliser counts no tokens "
                "(grpo.loss [D7])")
        at_least(self, "entropy_coef", 0, why="0 = off")
        at_least(self, "max_resample_rounds", 0)
        # evaluation
        at_least(self, "eval_steps", 0, why="0 = off")
        at_least(self, "eval_num_examples", 1, why="null = all")
        at_least(self, "eval_batch_size", 1)
        at_least(self, "eval_max_new_tokens", 1, why="null = max_completion_length")
        require(self, "eval_split", bool(self.eval_split), "must name a split of the task (e.g. test)")
        # optimisation
        at_least(self, "max_steps", 1)
        at_least(self, "micro_batch_size", 1)
