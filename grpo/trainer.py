"""The GRPO loop: sample → reward → advantages → μ optimiser passes → log/checkpoint.

One *step* is one generation batch: B prompts (split over ranks) × G completions, then μ
(`num_iterations`) optimiser passes over it, each made of micro-batches whose gradients accumulate.

[D1] old log-probs are recorded once, before the first pass, and only when μ > 1; at μ = 1 the
     ratio is exactly 1 (old_logp = logp.detach()), as in TRL, so no extra forward pass is spent.
[D2] The loss normalisers (sequences, tokens, selected tokens) count the whole generation batch on
     all ranks, so the gradient does not depend on the micro-batch split or the number of ranks.
[D3] Forking tokens: the entropies ranking the tokens come from the current policy under no grad:
     at pass 0 from the sampling pass (model distribution at temperature T), later from a no-grad
     forward; the exact top-k runs over the whole batch across ranks (kernels.top_k_entropy_mask).
[D4] Dynamic sampling `drop`: groups whose rewards are all equal carry no signal (A = 0); they are
     removed before the update, so they do not dilute the normalisers. `resample`: keep sampling new
     prompts (up to `max_resample_rounds` times) until B informative groups are collected.
[D5] Soft overlong punishment (DAPO) is added to the reward of every completion as a function of its
     length; `mask_truncated_completions` removes completions that hit the length limit from the loss.
[D6] Data order is a seeded permutation per epoch; its position is checkpointed with the RNG states,
     so `--resume` reproduces the metrics of an uninterrupted run.
[D7] Rewards are float64 (grpo.tasks [D3] [D4]); a ±inf reward stops the run on every rank with the
     function and row named, or becomes None and is counted (`rewards/non_finite`); a weighted sum or an
     advantage that overflows is an error, never a NaN update.
[D8] Advantages are computed from the rewards of the batch that is trained on: after `resample`
     replaces flat groups, the whole batch's advantages are recomputed (with scale_rewards=batch the
     replaced groups kept another batch's std, up to 0.79 off).
[D9] An optimiser step whose loss or gradient norm is not finite is not applied (grpo.optim
     `GuardedStep`); it is counted in `skipped_steps`, and the run stops after `max_skipped_steps`
     such steps in a row.
[D10] Prompts longer than `max_prompt_length` (default: the model's positions − L) are cut from the left
     when sampled, as TRL does, or their rows are dropped before the first step (`prompt_overflow`);
     counted in `prompts/truncated` (grpo.data.prompts). A 100 KB question no longer reaches the model.
[D11] The off-policy sequence mask (off_policy_mask_threshold) compares the sampler's log-probs with lp_θ:
     with vLLM sampling those are vLLM's (TRL likewise), with our bf16 loop its own [D12]; on the fp32 HF path
     they are lp_old, so at μ = 1, where lp_old = sg[lp_θ], it keeps every sequence and acts from the second
     pass on (grpo.surrogates [D4]).
[D12] With vLLM as the sampler (grpo.vllm_engine) lp_old is the trainer's own, never vLLM's: at μ = 1 it is
     sg[lp_θ] of the gradient pass itself, as [D1] (the numbers a separate no-grad forward would give; TRL
     spends that forward, ~1/3 of the update here), else the no-grad pass of [D1]. The entropies for the
     metrics and for forking tokens come from the trainer's forward too (vLLM gives none; forking tokens
     need them before the first pass, so they take the no-grad pass). With
     vllm_importance_sampling_correction each token's surrogate is weighted by sg[w(lp_old − lp_vllm)]
     (grpo.correction, ALGORITHMS.md §5); the mismatch metrics are logged with or without it.
     The trainer's weights reach vLLM before every sampling that follows an optimiser step, and before
     the first (an adapter, a resumed checkpoint or rank 0's broadcast differ from the files vLLM loaded).
     Our own loop in bf16 (sampler_dtype, grpo.decode_linears [G9]; Rollout.sampler "hf-bf16") is another sampler
     too: lp_old is the trainer's fp32 one as above, and the IS weight and the mismatch metrics compare it
     with the bf16 loop's log-probs. Unlike vLLM it records entropies, of the distribution it sampled, and
     those are kept: `sampling_entropy` then describes what was sampled, forking tokens rank by it at the
     first pass as on the fp32 path [D3] (a bf16 rounding away from the trainer's), and no forward is added.
"""
from __future__ import annotations

import dataclasses
import random
import time
from typing import Any

import torch

from grpo import correction
from grpo import distributed as dd
from grpo.config import UserError
from grpo.data.prompts import limit_prompts, truncate_prompts_left
from grpo.advantages import group_advantages, zero_std_groups
from grpo.batch import Batch, mismatch_metrics, replace_flat_groups, score_completions, step_metrics
from grpo.loss import policy_loss
from grpo.models import autocast
from grpo.optim import GuardedStep
from grpo.policy import completion_logprobs, reference_policy
from grpo.rollout import Rollout, Sampling, encode_prompts, eos_token_ids, sample_group
from grpo.sharding import policy_module, sampling_context
from kernels import top_k_entropy_mask


class PromptSampler:
    """Seeded epoch permutations of row indices; `state()` / `load_state()` for resume [D6]."""

    def __init__(self, n_rows: int, seed: int):
        self.n, self.seed, self.epoch, self.pos = n_rows, seed, 0, 0
        self._order = self._perm()

    def _perm(self) -> list[int]:
        order = list(range(self.n))
        random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        return order

    def next(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if self.pos == self.n:
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._perm()
            out.append(self._order[self.pos])
            self.pos += 1
        return out

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state(self, state: dict[str, int]) -> None:
        self.epoch, self.pos = state["epoch"], state["pos"]
        self._order = self._perm()


class GRPOTrainer:
    """Holds the model, optimiser and settings; `step()` runs one generation batch end to end."""

    def __init__(self, cfg, model, tokenizer, task, optimizer, scheduler, *, ref_model=None, engine=None):
        self.cfg, self.model, self.tok, self.task = cfg, model, tokenizer, task
        self.engine = engine  # grpo.vllm_engine.VLLMEngine, or None: our sampler (grpo.rollout) [D12]
        self.engine_stale = True  # the trainer's weights differ from the engine's [D12]
        self.sync_seconds = 0.0  # this step's weight syncs
        self.optimizer, self.scheduler, self.ref_model = optimizer, scheduler, ref_model
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.rank, self.world = dd.rank(), dd.world_size()
        self.max_prompt_length, rows = limit_prompts(
            task.rows, [r["prompt"] for r in task.rows], [r.get("prompt_suffix", "") for r in task.rows], tokenizer,
            model.config, max_prompt_length=cfg.max_prompt_length, overflow=cfg.prompt_overflow,
            max_new_tokens=cfg.max_completion_length, print_note=dd.rank() == 0)  # [D10]
        self.task = dataclasses.replace(task, rows=rows)
        self.truncated_prompts = 0  # this step's prompts cut to max_prompt_length on this rank
        self.sampler = PromptSampler(len(self.task.rows), cfg.seed)
        self.sampling = Sampling(max_new_tokens=cfg.max_completion_length, temperature=cfg.temperature,
                                 top_p=cfg.top_p, top_k=cfg.top_k, min_p=cfg.min_p,
                                 stop_strings=tuple(cfg.stop_strings) or task.stop_strings,
                                 linear_dtype=cfg.sampler_dtype)  # grpo.decode_linears [G9]
        self.weights = cfg.reward_weights or [1.0] * len(task.reward_funcs)
        if len(self.weights) != len(task.reward_funcs):
            raise ValueError(f"reward_weights has {len(self.weights)} entries for {len(task.reward_funcs)} "
                             f"reward functions ({', '.join(task.reward_names)})")
        if cfg.prompts_per_step % self.world:
            raise ValueError(f"prompts_per_step={cfg.prompts_per_step} must be divisible by {self.world} ranks")
        self.device = next(model.parameters()).device
        self.apply_step = GuardedStep(self.params, optimizer, scheduler, max_grad_norm=cfg.max_grad_norm,
                                      max_skipped=cfg.max_skipped_steps)  # [D9]

    # 1. sample ------------------------------------------------------------------------------------
    def _sample(self, n_prompts: int) -> tuple[list[dict[str, Any]], Rollout]:
        idx = self.sampler.next(n_prompts * self.world)  # every rank draws the same global order
        rows = [self.task.rows[i] for i in idx[self.rank::self.world]]
        suffix = rows[0].get("prompt_suffix", "")
        prompt_ids, prompt_mask = encode_prompts(self.tok, [r["prompt"] for r in rows], device=self.device,
                                                 generation_suffix=suffix)
        prompt_ids, prompt_mask, cut = truncate_prompts_left(prompt_ids, prompt_mask,
                                                             max_prompt_length=self.max_prompt_length)  # [D10]
        self.truncated_prompts += int(cut.sum())
        if self.engine is not None:  # [D12]
            if self.engine_stale:
                self.sync_seconds += self.engine.sync(self.model)
                self.engine_stale = False
            seed = int(torch.randint(0, 2**31 - 1, ()))  # from the checkpointed generator (grpo.vllm_engine [V6])
            return rows, self.engine.sample(self.tok, prompt_ids, prompt_mask, G=self.cfg.num_generations,
                                            sampling=self.sampling, seed=seed,
                                            eos_ids=eos_token_ids(self.model, self.tok))
        with autocast(self.device, self.cfg.bf16), sampling_context(self.model):  # (grpo.sharding [S3])
            return rows, sample_group(self.model, self.tok, prompt_ids, prompt_mask, G=self.cfg.num_generations,
                                      sampling=self.sampling)

    # 2.-3. reward and advantages ------------------------------------------------------------------
    def _score(self, rows, rollout) -> Batch:
        G = self.cfg.num_generations
        overlong = (self.cfg.max_completion_length, self.cfg.overlong_cache_length) \
            if self.cfg.overlong_cache_length > 0 else None
        error = None
        try:
            rewards, per_function, non_finite = score_completions(
                self.task, rows, rollout, G=G, weights=self.weights, overlong=overlong,
                non_finite=self.cfg.non_finite_rewards)
        except UserError as e:  # every rank stops, not only the one whose reward failed [D7]
            error = e
        if dd.any_rank(error is not None):
            raise error or UserError("another rank stopped while scoring its completions (its error is above)",
                                     every_rank=True)
        batch = Batch(rollout=rollout, rewards=rewards, per_function=per_function, advantages=rewards,
                      non_finite=non_finite)
        batch.advantages = self._advantages(batch.rewards)
        return batch

    def _advantages(self, rewards: torch.Tensor) -> torch.Tensor:
        """This rank's advantages [B, G] fp32, from every rank's rewards [D7] [D8]."""
        all_rewards = dd.all_gather_rows(rewards.to(self.device)).cpu()  # [B_total, G] float64, rank order
        adv = group_advantages(all_rewards, scale_rewards=self.cfg.scale_rewards, eps=self.cfg.adv_eps)
        B = rewards.shape[0]
        adv = adv[self.rank * B:(self.rank + 1) * B].float()  # [B, G] this rank's groups
        if not torch.isfinite(adv).all():  # e.g. scale_rewards=none with rewards near 1e38 [D7]
            raise UserError(f"advantages overflow float32 (rewards up to {all_rewards.abs().nanmax().item():.3g}, "
                            f"scale_rewards={self.cfg.scale_rewards}); scale the rewards", every_rank=True)
        return adv

    def _collect(self) -> tuple[Batch, dict[str, float]]:
        """Sample and score one generation batch, with dynamic sampling [D4]."""
        B = self.cfg.prompts_per_step // self.world
        t0 = time.perf_counter()
        rows, rollout = self._sample(B)
        t1 = time.perf_counter()
        batch = self._score(rows, rollout)
        t2 = time.perf_counter()
        timing = {"time/generate": t1 - t0, "time/score": t2 - t1}
        if self.cfg.dynamic_sampling == "resample":
            for _ in range(self.cfg.max_resample_rounds):
                keep = ~zero_std_groups(dd.all_gather_rows(batch.rewards.to(self.device)).cpu())
                if bool(keep.all()):
                    break
                t0 = time.perf_counter()
                rows2, rollout2 = self._sample(B)
                t1 = time.perf_counter()
                extra = self._score(rows2, rollout2)
                timing["time/generate"] += t1 - t0
                timing["time/score"] += time.perf_counter() - t1
                batch = replace_flat_groups(batch, extra, self.cfg.num_generations)
                batch.non_finite += extra.non_finite
            batch.advantages = self._advantages(batch.rewards)  # the std of the batch trained on [D8]
        return batch, timing

    # 4. update ------------------------------------------------------------------------------------
    def _logprobs(self, model, r: Rollout, sl: slice) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast(self.device, self.cfg.bf16):  # the decoder in bf16; LM head and loss fp32 (models [D8])
            return policy_module(model)(completion_logprobs, r.prompt_ids[sl], r.prompt_mask[sl],  # [S1]
                                        r.completion_ids[sl], r.completion_mask[sl], temperature=self.cfg.temperature)

    def _no_grad_pass(self, model, r: Rollout, slices) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            parts = [self._logprobs(model, r, sl) for sl in slices]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])  # [N, T] each

    def _update(self, batch: Batch) -> dict[str, float]:
        cfg, r = self.cfg, batch.rollout
        G = cfg.num_generations
        keep = torch.ones(r.completion_ids.shape[0], dtype=torch.bool)  # [N]
        if cfg.dynamic_sampling == "drop":  # [D4]
            keep = (~zero_std_groups(batch.rewards)).repeat_interleave(G)
        loss_mask = r.completion_mask & keep.to(self.device).unsqueeze(1)  # [N, T]
        if cfg.mask_truncated_completions:  # [D5]
            loss_mask = loss_mask & ~r.truncated.unsqueeze(1)
        advantages = batch.advantages.reshape(-1).to(self.device)  # [N]
        N = r.completion_ids.shape[0]
        slices = [slice(i, min(i + cfg.micro_batch_size, N)) for i in range(0, N, cfg.micro_batch_size)]
        num_sequences = dd.all_reduce_sum(keep.sum().to(self.device).float())  # [D2]
        num_tokens = dd.all_reduce_sum(loss_mask.sum().float())
        num_with_tokens = dd.all_reduce_sum(loss_mask.any(-1).sum().float())  # weight of per-sequence stats
        model = self.model
        self.model.train()
        from_engine = r.sampler != "hf"  # vLLM or our bf16 loop: the IS correction applies [D12]
        no_entropy = r.sampler == "vllm"  # vLLM records no entropies; our bf16 loop does, and keeps them [D12]
        old_logp = None
        if cfg.num_iterations > 1 or (no_entropy and cfg.top_entropy_quantile < 1.0):  # [D1] [D12]
            old_logp, old_entropy = self._no_grad_pass(model, r, slices)
            if no_entropy:
                r.entropy = old_entropy * r.completion_mask  # vLLM records none [D12]
        sampler_parts: list[dict[str, torch.Tensor]] = []  # grpo.correction.mismatch_stats per micro-batch
        ref_logp = None
        if cfg.beta > 0:
            with reference_policy(model, self.ref_model) as ref:
                ref_logp = self._no_grad_pass(ref, r, slices)[0]
        stats: dict[str, list[float]] = {}
        for it in range(cfg.num_iterations):
            token_mask, num_selected = None, None
            if cfg.top_entropy_quantile < 1.0:  # [D3]
                ent = r.entropy if it == 0 else self._no_grad_pass(model, r, slices)[1]
                token_mask = top_k_entropy_mask(ent, loss_mask, rho=cfg.top_entropy_quantile)
                num_selected = dd.all_reduce_sum((token_mask & loss_mask).sum().float())
            self.optimizer.zero_grad(set_to_none=True)
            loss_finite = True
            for sl in slices:
                logp, entropy = self._logprobs(model, r, sl)
                old = old_logp[sl] if old_logp is not None else logp.detach()  # [D1]
                weight = None
                if from_engine:  # the sampler–trainer correction [D12]
                    weight = correction.sampler_weights(
                        old, r.logp[sl], r.completion_mask[sl], mode=cfg.vllm_importance_sampling_mode,
                        clip_min=cfg.vllm_importance_sampling_clip_min, clip_max=cfg.vllm_importance_sampling_clip_max)
                    if it == 0:
                        sampler_parts.append(correction.mismatch_stats(old, r.logp[sl], r.completion_mask[sl], weight,
                                                                       mode=cfg.vllm_importance_sampling_mode))
                        if old_logp is None and no_entropy:
                            r.entropy[sl] = entropy.detach() * r.completion_mask[sl]
                    weight = weight if cfg.vllm_importance_sampling_correction else None  # logged either way
                loss, st = policy_loss(
                    logp, old, advantages[sl], loss_mask[sl],
                    loss_type=cfg.loss_type, eps_low=cfg.epsilon, eps_high=cfg.epsilon_high, delta=cfg.delta,
                    importance_sampling_level=cfg.importance_sampling_level,
                    sapo_temperature=(cfg.sapo_temperature_pos, cfg.sapo_temperature_neg),
                    vespo_k=(cfg.vespo_k_pos, cfg.vespo_k_neg),
                    vespo_lambda=(cfg.vespo_lambda_pos, cfg.vespo_lambda_neg),
                    off_policy_mask_threshold=cfg.off_policy_mask_threshold,  # [D11]
                    sampling_logp=r.logp[sl] if from_engine else None,
                    sampler_weight=weight,  # [D12]
                    ref_logp=ref_logp[sl] if ref_logp is not None else None, beta=cfg.beta,
                    use_bias_correction_kl=cfg.use_bias_correction_kl,
                    entropy=entropy, entropy_coef=cfg.entropy_coef,
                    token_mask=token_mask[sl] if token_mask is not None else None,
                    token_normalizer=cfg.token_normalizer, num_sequences=num_sequences, num_tokens=num_tokens,
                    num_selected_tokens=num_selected, max_completion_length=cfg.max_completion_length)
                loss.backward()
                loss_finite = loss_finite and bool(torch.isfinite(loss.detach()))
                w = float(st.num_tokens) / max(1.0, float(num_tokens))  # token-weighted stats
                _accumulate(stats, "loss", float(loss.detach()), 1.0)
                w_seq = float(st.num_sequences) / max(1.0, float(num_with_tokens))  # per-sequence stats
                for name, weight in STAT_WEIGHTS.items():
                    value = getattr(st, name)
                    if value is not None:
                        _accumulate(stats, METRIC_NAMES.get(name, name), float(value),
                                    w if weight == "tokens" else w_seq)
            dd.sum_gradients(self.params)
            grad_norm, applied = self.apply_step(loss_finite=not dd.any_rank(not loss_finite))  # [D9]
            _accumulate(stats, "grad_norm", grad_norm, 1.0 / cfg.num_iterations)
            _accumulate(stats, "skipped_steps", float(not applied), 1.0)
        out = {k: sum(v) / (1 if k in ("grad_norm", "skipped_steps") else cfg.num_iterations) for k, v in stats.items()}
        out["num_tokens"] = float(num_tokens)
        out["num_sequences_trained"] = float(num_sequences)
        if sampler_parts:
            out.update(mismatch_metrics(sampler_parts))
        return out

    # one step ------------------------------------------------------------------------------------
    def step(self) -> dict[str, Any]:
        self.truncated_prompts, self.sync_seconds = 0, 0.0
        batch, timing = self._collect()
        if self.engine is not None:
            timing["time/generate"] -= self.sync_seconds
            timing["time/sync_weights"] = self.sync_seconds
        t0 = time.perf_counter()
        update = self._update(batch)
        self.engine_stale = True  # [D12]
        timing["time/update"] = time.perf_counter() - t0
        update["prompts/truncated"] = float(dd.all_reduce_sum(torch.tensor(float(self.truncated_prompts))
                                                              .to(self.device)))
        return step_metrics(batch, update, timing, self.task.reward_names, lr=self.scheduler.get_last_lr()[0])


# PolicyLossStats fields logged, each combined over micro-batches by its tokens or its sequences (grpo.loss [D6])
STAT_WEIGHTS = {"kl": "tokens", "entropy": "tokens", "ratio_mean": "tokens", "clip_low": "tokens",
                "clip_high": "tokens", "clip_region": "tokens", "cispo_clip_ratio": "tokens",
                "vespo_phi_seq_mean": "sequences", "off_policy_masked": "sequences"}
METRIC_NAMES = {"vespo_phi_seq_mean": "vespo/phi_seq_mean",  # TRL's name
                "off_policy_masked": "off_policy_masked_frac"}


def _accumulate(stats: dict[str, list[float]], name: str, value: float, weight: float) -> None:
    stats.setdefault(name, []).append(value * weight)
