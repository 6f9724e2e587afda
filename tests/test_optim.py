"""Learning-rate schedules and optimisers."""
import math

import pytest
import torch

from grpo.config import UserError
from grpo.optim import lr_factor, make_optimizer, make_scheduler


def test_warmup_is_linear_then_each_schedule_follows_its_formula():
    kw = dict(warmup_steps=4, total_steps=14)
    assert [lr_factor(s, kind="constant", **kw) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    # after warm-up x = (s − 4) / 10
    assert lr_factor(9, kind="linear", **kw) == pytest.approx(0.5)
    assert lr_factor(9, kind="cosine", **kw) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(14, kind="cosine", **kw) == pytest.approx(0.0)
    assert lr_factor(100, kind="constant", **kw) == 1.0


def test_scheduler_drives_the_optimizer_learning_rate():
    p = torch.nn.Parameter(torch.zeros(3))
    opt = make_optimizer([p], name="adamw", lr=0.1, weight_decay=0.0)
    sched = make_scheduler(opt, kind="linear", warmup_steps=0, total_steps=4)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        p.grad = torch.ones(3)
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.1, 0.075, 0.05, 0.025])


def test_8bit_adamw_steps_on_cpu():
    p = torch.nn.Parameter(torch.randn(8192))
    before = p.detach().clone()
    opt = make_optimizer([p], name="adamw_8bit", lr=1e-2, weight_decay=0.0)
    p.grad = torch.randn(8192)
    opt.step()
    state = opt.state[p]
    assert state["state1"].dtype == torch.uint8  # the moments really are stored in 8 bits
    assert not torch.equal(p.detach(), before)


def test_unknown_optimizer_and_schedule_are_user_errors():
    p = torch.nn.Parameter(torch.zeros(1))
    with pytest.raises(UserError, match="adamw, adamw_8bit"):
        make_optimizer([p], name="sgd", lr=0.1, weight_decay=0.0)
    with pytest.raises(UserError, match="constant, linear, cosine"):
        make_scheduler(make_optimizer([p], name="adamw", lr=0.1, weight_decay=0.0), kind="exp",
                       warmup_steps=0, total_steps=1)
