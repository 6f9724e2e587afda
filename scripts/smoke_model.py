"""Smoke test of a model: load it, chat once, run one LoRA training step, save the run.

    python scripts/smoke_model.py                          # smollm2-135m (converted once from GGUF)
    python scripts/smoke_model.py --model tiny-llama --load-in-4bit

Steps:
    1. load the model and tokenizer (grpo.models.load_model) with the requested options
    2. greedy-decode an answer to `prompt` with the chat template
    3. one AdamW step on the answer's log-likelihood (proves gradients reach the trainable weights)
    4. write outputs/<run>/{config.json, metrics.jsonl, sample.txt}

Logged metrics (metrics.jsonl):
    load_seconds        time to load model + tokenizer
    generate_seconds    time to generate the answer
    new_tokens          number of generated tokens
    loss                mean negative log-likelihood of the answer before the step
    trainable_params    number of trainable parameters
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from grpo.config import SEED_RANGE, above, at_least, cli_main, parse_settings, path_name, within  # noqa: E402
from grpo.models import ModelSettings, load_model_from_settings  # noqa: E402
from grpo.run import MetricsWriter, RunDir, atomic_write_text, output_root, seed_everything  # noqa: E402


@dataclass
class SmokeSettings(ModelSettings):
    prompt: str = "What is 12 + 30? Answer with a number."
    """the user message to answer"""
    max_new_tokens: int = 32
    """how many tokens to generate at most"""
    learning_rate: float = 1e-4
    """AdamW learning rate of the single training step"""
    run_name: str = "smoke"
    """run folder under outputs/"""
    seed: int = 0
    """random seed"""

    def validate(self) -> None:
        """Ranges, checked before anything loads (grpo.config [D9]; the base classes check their own)."""
        at_least(self, "max_new_tokens", 1)
        above(self, "learning_rate", 0)
        path_name(self, "run_name")
        within(self, "seed", *SEED_RANGE)


def main() -> None:
    s = parse_settings(SmokeSettings, description=__doc__)
    seed_everything(s.seed)
    run = RunDir(output_root() / s.run_name)
    run.save_config(s)

    # 1. load
    t0 = time.perf_counter()
    model, tok = load_model_from_settings(s)
    load_s = time.perf_counter() - t0

    # 2. generate
    enc = tok.apply_chat_template([{"role": "user", "content": s.prompt}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True).to(model.device)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=s.max_new_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id)
    gen_s = time.perf_counter() - t0
    P = enc["input_ids"].shape[1]
    answer_ids = out[:, P:]  # [1, T]
    answer = tok.decode(answer_ids[0], skip_special_tokens=True)
    print(f"prompt: {s.prompt}\nanswer: {answer}")

    # 3. one training step on the answer tokens (labels = -100 on the prompt)
    labels = out.clone()
    labels[:, :P] = -100
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=s.learning_rate)
    loss = model(input_ids=out, attention_mask=torch.ones_like(out), labels=labels).loss
    loss.backward()
    opt.step()

    # 4. outputs
    atomic_write_text(run.path / "sample.txt", f"prompt: {s.prompt}\nanswer: {answer}\n")
    with MetricsWriter(run.metrics_file) as mw:
        row = mw.log(0, dict(load_seconds=load_s, generate_seconds=gen_s, new_tokens=answer_ids.shape[1],
                             loss=loss.item(), trainable_params=sum(p.numel() for p in params)))
    print(row)
    print(f"outputs in {run.path}")


if __name__ == "__main__":
    cli_main(main)
