"""Schedule values (SBN's nu, ABR's lambda and phase) live in 0-d buffers that the schedule fills in place, so a
network under torch.compile follows them without recompiling, and computes what the eager network computes."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters

from binexp.builder import build
from binexp.callbacks.schedule import write_buffers
from binexp.models import build_model
from binexp.schedules import Progress
from tests.conftest import SMOKE, compose_train

RUNS = {
    "sbn-xnor": ["method=sbn", "method.base=xnor", "architecture.batch_norm=true", "architecture.conv_act=true"],
    "sbn-bnn-per-step": ["method=sbn", "method.base=bnn", "architecture.batch_norm=true", "architecture.conv_act=true",
                         "schedule.per_step=true"],
    "abr-in-loss": ["method=abr", "method.growth=in_loss", "schedule.phase1_epochs=2"],
}


@pytest.mark.parametrize("name", RUNS)
def test_a_compiled_objective_follows_the_schedule_without_recompiling(name):
    cfg = compose_train(SMOKE + RUNS[name] + ["trainer.max_epochs=4"])
    method, schedule = build(cfg.method), build(cfg.schedule)
    torch.manual_seed(0)
    net = build_model(cfg.architecture, method, (1, 28, 28), 10)
    twin = copy.deepcopy(net)

    def objective(model, x, y):  # what the training step minimises
        loss = F.cross_entropy(model(x), y)
        extra = method.regularization(model)
        return loss if extra is None else loss + extra

    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(objective, backend="eager", fullgraph=True)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    seen = []
    with torch._dynamo.config.patch(error_on_recompile=True):
        for step in (0, 25, 39):  # epochs 0, 2 (ABR's phase 2) and 3, the last step
            values = schedule.values(Progress(step, steps_per_epoch=10, max_epochs=4))
            assert write_buffers(net, values) == write_buffers(twin, values) > 0
            loss = compiled(net, x, y)
            assert torch.equal(loss, objective(twin, x, y)), step
            loss.backward()
            seen.append(values)
    assert counters["stats"]["unique_graphs"] == 1
    assert len({tuple(sorted(v.items())) for v in seen}) >= 2  # the buffers did change between the calls
    for p, q in zip(net.parameters(), twin.parameters()):
        assert p.grad is not None and q.grad is None  # the gradients flowed through the compiled graph
