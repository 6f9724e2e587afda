"""The SEGA loop: sample k candidates → score (Eq. 1) → filter → rewards and advantages (Eq. 2) → update.

GEM / GenPref-SEGA (arXiv 2511.13007; ALGORITHMS.md §4). One *step* is one batch of B prompts (split
over ranks), each with k sampled candidates (N = B·k rows, candidate i of prompt b at row b·k + i):

    1. sample     k candidates per prompt with the shared sampler (grpo.rollout, T = `temperature`)
    2. score      S = −H_final + λ·mean(top-m H) from the policy's own entropies at T = 1 (sega.scoring)
    3. filter     valid = non-empty, minus low outliers / outside the (top, bottom) pair (sega.filtering)
    4. advantage  r = S or softmax(S/τ) over the valid; A = r − mean(r) (or z-scored) (sega.loss)
    5. update     L = (1/B) Σ_q −(1/k_valid) Σ_i sg[A_i]·Σ_t lp_θ, micro-batched, summed over ranks,
                  clipped, AdamW step, schedule; μ passes with the PPO ratio when num_iterations > 1

Implementation details:

[D1] Candidates whose decoded text is empty (the first token was EOS) are not valid: Eq. 1 has no
     reasoning and no answer to read (the official code skips them; sega.scoring [D4]).
[D2] Scores are read in eval mode (no dropout), under no grad, at T = 1: they rank candidates and must
     not be noisy. The loss log-probs lp_θ are those of the same model distribution (T = 1), the one
     preference accuracy reads, not the sampling temperature.
[D3] Micro-batches hold whole prompts (⌊micro_batch_size / k⌋, at least one), because Eq. 2 averages
     over the candidates of a prompt; the loss normaliser is the B of the whole step on all ranks, so
     the gradient does not depend on the split or the number of ranks (sega.loss [D4], grpo.trainer [D2]).
[D4] old log-probs are recorded once, before the first pass, and only when num_iterations > 1 (the
     ratio is then switched on); at one pass the loss is the paper's REINFORCE form, with no ratio.
[D5] Advantages are per prompt, so no rank needs another's rewards; only counts and logged statistics
     cross ranks. Data order is grpo.trainer.PromptSampler's, checkpointed for `--resume`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, fields
from typing import Any

import torch

from grpo import distributed as dd
from grpo.data.prompts import limit_prompts, truncate_prompts_left
from grpo.models import autocast
from grpo.optim import GuardedStep
from grpo.policy import completion_logprobs, reference_policy
from grpo.rollout import Rollout, Sampling, encode_prompts, sample_group
from grpo.sharding import policy_module, sampling_context
from grpo.trainer import PromptSampler
from sega.filtering import drop_low_outliers, map_rewards, top_bottom_pairs
from sega.implicit_reward import format_prompt
from sega.loss import sega_advantages, sega_loss
from sega.scoring import EntropyScore, score_completions


@dataclass
class SegaBatch:
    """One step's candidates on this rank; every (B, k) tensor is on the CPU, fp32 or bool."""

    rollout: Rollout  # N = B·k rows
    score: EntropyScore  # (N,) fields: S, H_final, fork entropy
    valid: torch.Tensor  # (B, k) bool: the candidate takes part in the loss
    rewards: torch.Tensor  # (B, k) fp32, NaN where not valid
    advantages: torch.Tensor  # (B, k) fp32, 0 where not valid


class SegaTrainer:
    """Holds the model, optimiser and settings (sega.settings.SegaSettings); `step()` runs one batch."""

    def __init__(self, cfg, model, tokenizer, rows: list[dict[str, Any]], optimizer, scheduler, *, ref_model=None):
        self.cfg, self.model, self.tok, self.rows = cfg, model, tokenizer, rows
        self.optimizer, self.scheduler, self.ref_model = optimizer, scheduler, ref_model
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.rank, self.world = dd.rank(), dd.world_size()
        if cfg.batch_size % self.world:
            raise ValueError(f"batch_size={cfg.batch_size} must be divisible by {self.world} ranks")
        self.max_prompt_length, rows = limit_prompts(  # as GRPO (grpo.trainer [D10])
            rows, [format_prompt(tokenizer, r["prompt"]) for r in rows], None, tokenizer, model.config,
            max_prompt_length=cfg.max_prompt_length, overflow=cfg.prompt_overflow,
            max_new_tokens=cfg.gen_max_new_tokens, print_note=self.rank == 0)
        self.rows = rows
        self.truncated_prompts = 0  # this step's prompts cut to max_prompt_length on this rank
        self.sampler = PromptSampler(len(rows), cfg.seed)
        self.sampling = Sampling(max_new_tokens=cfg.gen_max_new_tokens, temperature=cfg.temperature,
                                 top_p=cfg.top_p, top_k=cfg.top_k, min_p=cfg.min_p,
                                 stop_strings=tuple(cfg.stop_strings))
        self.prompts_per_micro = max(1, cfg.micro_batch_size // cfg.k)  # [D3]
        self.device = next(model.parameters()).device
        self.apply_step = GuardedStep(self.params, optimizer, scheduler, max_grad_norm=cfg.max_grad_norm,
                                      max_skipped=cfg.max_skipped_steps)  # grpo.optim [D1]

    # 1. sample -----------------------------------------------------------------------------------
    def _sample(self) -> Rollout:
        B = self.cfg.batch_size // self.world
        idx = self.sampler.next(B * self.world)[self.rank::self.world]  # same global order on every rank
        texts = [format_prompt(self.tok, self.rows[i]["prompt"]) for i in idx]  # chat template, as SFT/eval
        prompt_ids, prompt_mask = encode_prompts(self.tok, texts, device=self.device)  # (B, P)
        prompt_ids, prompt_mask, cut = truncate_prompts_left(prompt_ids, prompt_mask,
                                                             max_prompt_length=self.max_prompt_length)
        self.truncated_prompts += int(cut.sum())
        with autocast(self.device, self.cfg.bf16), sampling_context(self.model):  # models [D8], sharding [S3]
            return sample_group(self.model, self.tok, prompt_ids, prompt_mask, G=self.cfg.k, sampling=self.sampling)

    def _row_slices(self, N: int) -> list[slice]:
        step = self.prompts_per_micro * self.cfg.k
        return [slice(i, min(i + step, N)) for i in range(0, N, step)]  # whole prompts each [D3]

    # 2. score ------------------------------------------------------------------------------------
    def _score(self, r: Rollout) -> EntropyScore:
        cfg, was_training = self.cfg, self.model.training
        self.model.eval()  # [D2]
        try:
            with autocast(self.device, cfg.bf16):
                parts = [policy_module(self.model)(score_completions, self.tok, r.prompt_ids[sl], r.prompt_mask[sl],
                                           r.completion_ids[sl], r.completion_mask[sl], markers=cfg.markers,
                                           final_frac=cfg.final_frac, final_window=cfg.final_window,
                                           top_m=cfg.top_m, lambda_fork=cfg.lambda_fork,
                                           include_eos=cfg.score_include_eos)
                         for sl in self._row_slices(len(r.completions))]
        finally:
            self.model.train(was_training)
        return EntropyScore(**{f.name: torch.cat([getattr(p, f.name) for p in parts]).cpu()
                               for f in fields(EntropyScore)})  # (N,) and (N, T) fields

    # 3.-4. filter, rewards, advantages -------------------------------------------------------------
    def _advantages(self, r: Rollout, score: EntropyScore) -> SegaBatch:
        cfg, k = self.cfg, self.cfg.k
        scores = score.score.view(-1, k)  # (B, k)
        valid = torch.tensor([bool(c.strip()) for c in r.completions]).view(-1, k)  # (B, k)  [D1]
        if cfg.drop_low_outliers:
            valid = drop_low_outliers(scores, valid, iqr_factor=cfg.iqr_factor)  # (B, k)
        if cfg.pairs:
            valid = valid & top_bottom_pairs(scores, valid).keep(k)  # (B, k)
        rewards = map_rewards(scores, valid, mapping=cfg.reward_mapping, tau=cfg.tau)  # (B, k), NaN if invalid
        advantages = sega_advantages(rewards, adv_norm=cfg.adv_norm)  # (B, k)  Eq. 2
        return SegaBatch(rollout=r, score=score, valid=valid, rewards=rewards, advantages=advantages)

    def collect(self) -> tuple[SegaBatch, dict[str, float]]:
        t0 = time.perf_counter()
        rollout = self._sample()
        t1 = time.perf_counter()
        batch = self._advantages(rollout, self._score(rollout))
        return batch, {"time/generate": t1 - t0, "time/score": time.perf_counter() - t1}

    # 5. update -----------------------------------------------------------------------------------
    def _logprobs(self, model, r: Rollout, sl: slice) -> torch.Tensor:
        with autocast(self.device, self.cfg.bf16):
            return policy_module(model)(completion_logprobs, r.prompt_ids[sl], r.prompt_mask[sl],  # sharding [S1]
                                        r.completion_ids[sl], r.completion_mask[sl], temperature=1.0)[0]  # (n, T) [D2]

    def _no_grad_logprobs(self, model, r: Rollout, slices: list[slice]) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([self._logprobs(model, r, sl) for sl in slices])  # (N, T)

    def update(self, batch: SegaBatch) -> dict[str, float]:
        cfg, r, k = self.cfg, batch.rollout, self.cfg.k
        slices = self._row_slices(r.completion_ids.shape[0])
        valid = batch.valid.to(self.device)  # (B, k)
        advantages = batch.advantages.to(self.device)  # (B, k)
        num_prompts = int(dd.all_reduce_sum(torch.tensor(float(valid.shape[0]), device=self.device)))  # [D3]
        num_tokens = dd.all_reduce_sum((r.completion_mask & valid.reshape(-1, 1)).sum().float())
        self.model.train()
        old_logp = self._no_grad_logprobs(self.model, r, slices) if cfg.num_iterations > 1 else None  # [D4]
        ref_logp = None
        if cfg.kl_coef > 0:
            with reference_policy(self.model, self.ref_model) as ref:
                ref_logp = self._no_grad_logprobs(ref, r, slices)
        stats: dict[str, float] = {}
        for _ in range(cfg.num_iterations):
            self.optimizer.zero_grad(set_to_none=True)
            loss_finite = True
            for sl in slices:
                ps = slice(sl.start // k, sl.stop // k)  # the prompts of these rows
                loss, st = sega_loss(self._logprobs(self.model, r, sl), advantages[ps], r.completion_mask[sl],
                                     valid[ps], length_normalize=cfg.length_normalize,
                                     old_logp=None if old_logp is None else old_logp[sl],
                                     eps_low=cfg.epsilon, eps_high=cfg.epsilon_high,
                                     ref_logp=None if ref_logp is None else ref_logp[sl], beta=cfg.kl_coef,
                                     num_prompts=num_prompts)
                loss.backward()
                loss_finite = loss_finite and bool(torch.isfinite(loss.detach()))
                w = float(st.num_tokens) / max(1.0, float(num_tokens)) / cfg.num_iterations  # token weight
                _add(stats, "loss", float(loss.detach()) / cfg.num_iterations)
                _add(stats, "pg_loss", float(st.pg_loss) / cfg.num_iterations)
                _add(stats, "ratio_mean", float(st.ratio_mean) * w)
                _add(stats, "clip_fraction", float(st.clip_fraction) * w)
                if st.kl is not None:
                    _add(stats, "kl", float(st.kl) * w)
            dd.sum_gradients(self.params)
            grad_norm, applied = self.apply_step(loss_finite=not dd.any_rank(not loss_finite))  # skip non-finite
            _add(stats, "grad_norm", grad_norm / cfg.num_iterations)
            _add(stats, "skipped_steps", float(not applied))
        for name in ("loss", "pg_loss", "ratio_mean", "clip_fraction", "kl"):  # this rank's share of the
            if name in stats:  # whole-batch value (global normalisers [D3]): add the other ranks' shares
                stats[name] = float(dd.all_reduce_sum(torch.tensor(stats[name], device=self.device)))
        return {**stats, "num_tokens": float(num_tokens)}

    # one step ------------------------------------------------------------------------------------
    def step(self) -> dict[str, Any]:
        self.truncated_prompts = 0
        batch, timing = self.collect()
        t0 = time.perf_counter()
        update = self.update(batch)
        timing["time/update"] = time.perf_counter() - t0
        update["prompts/truncated"] = float(dd.all_reduce_sum(torch.tensor(float(self.truncated_prompts))
                                                              .to(self.device)))
        return step_metrics(batch, update, timing, lr=self.scheduler.get_last_lr()[0], epoch=self.sampler.epoch)


def _add(stats: dict[str, float], name: str, value: float) -> None:
    stats[name] = stats.get(name, 0.0) + value


def step_metrics(batch: SegaBatch, update: dict[str, float], timing: dict[str, float], *, lr: float,
                 epoch: int) -> dict[str, Any]:
    """Per-step metrics over all ranks (glossary in scripts/train_sega.py)."""
    r, dev = batch.rollout, batch.rollout.completion_ids.device

    def gather(x: torch.Tensor) -> torch.Tensor:
        return dd.all_gather_rows(x.to(dev)).cpu()

    valid = gather(batch.valid)  # (B_total, k)
    flat = valid.reshape(-1)  # (N_total,)
    score, h_final, fork = (gather(getattr(batch.score, f))[flat] for f in ("score", "h_final", "fork_entropy"))
    rewards, adv = gather(batch.rewards)[valid], gather(batch.advantages)[valid]  # (n_valid,)
    lengths, truncated = gather(r.lengths.float()), gather(r.truncated.float())  # (N_total,)
    spread = gather(batch.score.score.view(-1, valid.shape[1]))  # (B_total, k)

    def mean(x: torch.Tensor) -> float:
        return x.mean().item() if x.numel() else float("nan")

    def std(x: torch.Tensor) -> float:
        return x.std().item() if x.numel() > 1 else 0.0

    m: dict[str, Any] = {
        "score": mean(score), "score_std": std(score),
        "score_group_range": (spread.amax(1) - spread.amin(1)).mean().item(),
        "h_final": mean(h_final), "fork_entropy": mean(fork),
        "reward": mean(rewards), "reward_std": std(rewards),
        "advantage_mean": mean(adv), "advantage_std": std(adv),
        "advantage_abs_max": adv.abs().max().item() if adv.numel() else 0.0,
        "frac_zero_advantage_groups": (gather(batch.advantages).abs().sum(1) == 0).float().mean().item(),
        "valid_frac": flat.float().mean().item(),
        "completion_length": lengths.mean().item(), "completion_length_max": lengths.max().item(),
        "truncated_frac": truncated.mean().item(), "lr": lr, "epoch": epoch,
    }
    m.update(update)
    m.update(timing)
    m["tokens_per_second"] = float(lengths.sum()) / max(sum(timing.values()), 1e-9)
    return m
