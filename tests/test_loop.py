"""The shared training loop (`biomamba.training.loop.fit`) on a tiny linear model: gradient
accumulation, bounded skipping of non-finite steps, epoch-keyed items for persistent workers."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from biomamba.training.devices import Distributed
from biomamba.training.loop import LoopConfig, Run, default_workers, fit, make_optimizer
from biomamba.training.runs import NonFiniteLossError


class Points(Dataset):
    """n fixed random (x [4], y) pairs; ``epoch`` is added to y so that a test can see which
    epoch's items a batch holds."""

    def __init__(self, n: int = 8):
        g = torch.Generator().manual_seed(1)
        self.x, self.y = torch.randn(n, 4, generator=g), torch.randn(n, generator=g)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i], float(self.epoch)


def collate(items):
    return {"x": torch.stack([i[0] for i in items]), "y": torch.stack([i[1] for i in items]),
            "epoch": torch.tensor([i[2] for i in items])}


def mse(net, batch, state):
    return ((net(batch["x"]).squeeze(-1) - batch["y"]) ** 2).mean(), {}


def run_fit(tmp_path, name, loss_fn=mse, **loop) -> tuple[nn.Module, object]:
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    cfg = LoopConfig(out=tmp_path / name, epochs=loop.pop("epochs", 2), batch_size=loop.pop("batch_size"),
                     shuffle=False, **loop)
    (tmp_path / name).mkdir()
    state = fit(Run(torch.device("cpu"), None, Distributed()), cfg, model, optimizer, scheduler, Points(),
                collate, loss_fn, save=lambda folder, info: None, load=lambda folder: None)
    return model, state


def test_accumulating_two_batches_equals_one_batch_of_twice_the_size(tmp_path):
    """Issue 10 item 3: --accumulate 2 at batch b takes the same steps as batch 2b."""
    big, big_state = run_fit(tmp_path, "big", batch_size=4, accumulate=1)
    acc, acc_state = run_fit(tmp_path, "acc", batch_size=2, accumulate=2)
    small, _ = run_fit(tmp_path, "small", batch_size=2, accumulate=1)
    assert big_state.global_step == acc_state.global_step == 4           # 2 epochs x 8 items / 4
    for p, q in zip(big.parameters(), acc.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(small.weight, big.weight)                   # the test can tell them apart


def test_a_non_finite_step_is_skipped_and_too_many_stop_the_run(tmp_path):
    def poisoned(steps):
        def loss_fn(net, batch, state):
            loss, stats = mse(net, batch, state)
            return (loss * float("nan") if state.global_step in steps else loss), stats
        return loss_fn

    model, state = run_fit(tmp_path, "one", loss_fn=poisoned({1}), batch_size=2, max_skipped_steps=2)
    assert state.skipped_steps == 1 and state.global_step == 8
    assert all(torch.isfinite(p).all() for p in model.parameters())
    log = [json.loads(line) for line in (tmp_path / "one" / "log.jsonl").read_text().splitlines()]
    assert log[0]["skipped_steps"] == 1 and "skipped_steps" not in log[1]
    assert math.isfinite(log[0]["train_loss"])
    # the NaN step was really left out (test_skipping_a_step_equals_leaving_its_batch_out checks how)
    reference = run_fit(tmp_path, "ref", loss_fn=poisoned(set()), batch_size=2, epochs=2)[0]
    assert not torch.allclose(reference.weight, model.weight)

    with pytest.raises(NonFiniteLossError, match=r"loss became nan at epoch 1, step 4 of the epoch.*3 non-finite"):
        run_fit(tmp_path, "many", loss_fn=poisoned({1, 2, 3, 4, 5}), batch_size=2, max_skipped_steps=2)
    with pytest.raises(NonFiniteLossError, match="epoch 1, step 2 of the epoch"):
        run_fit(tmp_path, "none", loss_fn=poisoned({1}), batch_size=2, max_skipped_steps=0)


def test_skipping_a_step_equals_leaving_its_batch_out(tmp_path):
    """Oracle: a run whose step 1 is skipped ends with the weights of plain SGD over the other steps."""
    def loss_fn(net, batch, state):
        loss, stats = mse(net, batch, state)
        return (loss * float("nan") if state.global_step == 1 else loss), stats

    model, _ = run_fit(tmp_path, "skip", loss_fn=loss_fn, batch_size=2, epochs=1)
    torch.manual_seed(0)
    ref = nn.Linear(4, 1)
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    data = Points()
    for step in range(4):
        if step == 1:
            continue
        batch = collate([data[i] for i in range(2 * step, 2 * step + 2)])
        opt.zero_grad()
        mse(ref, batch, None)[0].backward()
        opt.step()
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q)


def test_persistent_workers_see_each_epoch(tmp_path):
    """Workers keep their own copy of the dataset across epochs; the epoch travels with the index."""
    seen = []

    def loss_fn(net, batch, state):
        seen.append((state.epoch, set(batch["epoch"].tolist())))
        return mse(net, batch, state)

    run_fit(tmp_path, "workers", loss_fn=loss_fn, batch_size=4, epochs=3, workers=1)
    assert seen == [(e, {float(e)}) for e in (0, 0, 1, 1, 2, 2)]
    assert default_workers() >= 0


def test_weight_decay_is_decoupled_from_the_gradient_and_spares_biases():
    """With a zero gradient a matrix shrinks by exactly lr x weight_decay in one step (AdamW); an L2
    term inside Adam would instead move it by about lr (its gradient wd x w divided by its own RMS).
    Biases are not decayed."""
    torch.manual_seed(0)
    layer = nn.Linear(3, 2)
    weight, bias = layer.weight.detach().clone(), layer.bias.detach().clone()
    lr, wd = 0.1, 0.5
    optimizer = make_optimizer(layer, lr, wd)
    for p in layer.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    torch.testing.assert_close(layer.weight.detach(), weight * (1 - lr * wd))
    torch.testing.assert_close(layer.bias.detach(), bias)
