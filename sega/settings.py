"""Settings of a SEGA run (scripts/train_sega.py, sega/trainer.py); ALGORITHMS.md §4.

The flags of the original GenPref-SEGA README keep their names (`--k --lambda_fork --top_m --final_window
--final_frac --reward_mapping --beta --gen_max_new_tokens --temperature --top_p --epochs --batch_size
--seed`); scripts/train_sega.py maps the rest (`--lr --model_name_or_path --train_jsonl --out_dir`).

Two betas: the README's `beta` is the implicit-reward scale of r(q, a) = β·Σ lp (evaluation; it never
changes a ranking), so the k3 KL coefficient, off by default, is `kl_coef`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from grpo.config import above, at_least, require, within
from grpo.distributed import env_world_size
from grpo.models import ModelSettings
from grpo.optim import OptimSettings
from grpo.run import RunSettings
from grpo.settings import PromptLengthSettings, check_sampling
from sega.scoring import DEFAULT_MARKERS


@dataclass
class SegaSettings(RunSettings, OptimSettings, PromptLengthSettings, ModelSettings):
    # --- data
    dataset: str = "bundled"
    """preference pairs {"prompt", "chosen", "rejected"}: `bundled`, a .jsonl/.json file or a folder"""
    split: str = "train"
    """split of the bundled set or folder to train on"""
    dataset_limit: Optional[int] = None
    """train on the first N pairs only"""
    eval_dataset: str = "bundled"
    """pairs for the held-out preference accuracy written at the end ("" = skip the evaluation)"""
    eval_split: str = "test"
    """split of eval_dataset"""
    eval_batch_size: int = 8
    """pairs scored together by the evaluation"""
    # --- 1. sampling
    k: int = 4
    """candidates sampled per prompt (the group size of Eq. 2)"""
    gen_max_new_tokens: int = 256
    """new tokens per candidate at most"""
    temperature: float = 0.9
    """sampling temperature (scores and the loss always read the model distribution, T = 1)"""
    top_p: float = 1.0
    """nucleus sampling mass (1.0 = off; the seed README used 0.95)"""
    top_k: int = 0
    """top-k sampling (0 = off)"""
    min_p: float = 0.0
    """min-p sampling (0 = off)"""
    stop_strings: list[str] = field(default_factory=list)
    """strings that end a candidate early"""
    # --- 2. entropy-guided score (Eq. 1)
    lambda_fork: float = 1.0
    """λ: weight of the mean top-m entropy of the reasoning span (official code 1.0; seed README 0.4)"""
    top_m: float = 0.1
    """top-m of the reasoning span: a fraction (< 1) or a count (>= 1)"""
    final_frac: float = 0.2
    """final span without a marker: the last ceil(final_frac·n) tokens"""
    final_window: Optional[int] = None
    """final span without a marker: the last N tokens (replaces final_frac when set)"""
    markers: list[str] = field(default_factory=lambda: list(DEFAULT_MARKERS))
    """final-answer markers; the final span starts after the last one found"""
    score_include_eos: bool = False
    """score the EOS token that ends a candidate too (its entropy is that of stopping; sega.scoring [D8])"""
    # --- 3. cognitive filtering
    drop_low_outliers: bool = False
    """leave out candidates scoring below Q1 − iqr_factor·(Q3 − Q1) of their group"""
    iqr_factor: float = 1.5
    """Tukey fence factor of drop_low_outliers"""
    pairs: bool = False
    """train only on the (top, bottom) scored candidates of each prompt"""
    # --- 4. rewards and advantages (Eq. 2)
    reward_mapping: Literal["identity", "softmax"] = "identity"
    """r = S (identity) or softmax(S / tau) over the valid candidates of a prompt"""
    tau: float = 1.0
    """softmax temperature of reward_mapping=softmax"""
    adv_norm: Literal["center", "zscore"] = "center"
    """A = r − mean(r) (paper) or divided by the group std as well (official code)"""
    # --- 5. loss
    length_normalize: bool = False
    """divide each candidate's Σ_t lp by its length"""
    num_iterations: int = 1
    """optimiser passes per sampled batch; > 1 switches on the PPO ratio and clip"""
    epsilon: float = 0.2
    """ε_low of the ratio clip (num_iterations > 1)"""
    epsilon_high: float = 0.2
    """ε_high of the ratio clip (num_iterations > 1)"""
    kl_coef: float = 0.0
    """k3 KL coefficient; 0 = no reference pass. The reference is the model as loaded: with an SFT adapter
    trained further, a frozen copy of it (as in TRL); with a fresh LoRA adapter, the adapter switched off"""
    beta: float = 1.0
    """β of the implicit reward r(q, a) = β·Σ lp used by the final preference evaluation"""
    # --- optimisation
    epochs: int = 1
    """passes over the training prompts (ignored when max_steps > 0)"""
    max_steps: int = 0
    """SEGA steps to run; 0 = ceil(epochs · prompts / batch_size)"""
    batch_size: int = 1
    """prompts per SEGA step, over all ranks (each gets k candidates)"""
    micro_batch_size: int = 8
    """candidates per forward/backward pass, rounded down to whole prompts (at least one)"""
    learning_rate: float = 1e-4
    """peak AdamW learning rate (LoRA; the seed README's 5e-6 is for full fine-tuning of an 8B model)"""
    # (and OptimSettings: weight_decay, optimizer, lr_scheduler, warmup_ratio, max_grad_norm)
    # --- run (and RunSettings: seed, logging_steps, save_steps, save_total_limit, resume, tensorboard)
    run_name: str = "sega"
    """output folder: a name under outputs/ ($GRPO_OUTPUT_ROOT) or a path containing '/'"""

    def validate(self) -> None:
        """Ranges and the rules between settings, checked before anything loads (grpo.config [D9])."""
        at_least(self, "dataset_limit", 1, why="null = every pair")
        at_least(self, "eval_batch_size", 1)
        require(self, "eval_dataset", not (self.eval_dataset and self.sharding == "fsdp2"),
                "must be '' with sharding = fsdp2 (the held-out evaluation runs on rank 0 alone, which cannot "
                "run a sharded model): evaluate final/ with scripts/eval_pref_accuracy.py")
        # 1. sampling
        at_least(self, "k", 2, why="the group advantage needs two candidates per prompt")
        at_least(self, "gen_max_new_tokens", 1)
        check_sampling(self)
        # 2.-4. score, filter, rewards
        at_least(self, "lambda_fork", 0)
        require(self, "top_m", 0 < self.top_m < 1 or (self.top_m >= 1 and float(self.top_m).is_integer()),
                "must be a fraction in (0, 1) or a whole count >= 1")
        within(self, "final_frac", 0, 1, low_open=True)
        at_least(self, "final_window", 1, why="null = final_frac decides")
        require(self, "markers", all(self.markers), "must not hold an empty string (it is found everywhere)")
        at_least(self, "iqr_factor", 0)
        above(self, "tau", 0)
        # 5. loss
        at_least(self, "num_iterations", 1)
        within(self, "epsilon", 0, 1, why="the ratio's lower clip is 1 - epsilon")
        at_least(self, "epsilon_high", 0)
        at_least(self, "kl_coef", 0, why="0 = no reference pass")
        above(self, "beta", 0)
        # optimisation
        at_least(self, "epochs", 1)
        at_least(self, "max_steps", 0, why="0 = as many as epochs take")
        at_least(self, "batch_size", 1)
        world = env_world_size()
        require(self, "batch_size", self.batch_size % world == 0,
                f"must be divisible by the number of processes, WORLD_SIZE = {world} (each samples an equal share)")
        at_least(self, "micro_batch_size", 1)
