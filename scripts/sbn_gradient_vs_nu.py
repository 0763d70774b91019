"""How the gradient reaching each layer's latent weights scales with SBN's nu (RESULTS, SBN Table 1).

Builds a freshly initialised network from an experiment, sets every `nu` buffer by hand, and prints the norm of each
weight's gradient after one forward/backward pass on a random batch. With tanh(nu x) activations the gradient is
multiplied by up to nu at every binary layer it passes back through.

    python scripts/sbn_gradient_vs_nu.py --experiment sbn_table1_sbn_bnn sbn_table1_sbn_bc
"""

from __future__ import annotations

import argparse

import torch
from hydra.errors import HydraException

from binexp.builder import build
from binexp.callbacks.schedule import write_buffers
from binexp.config import compose_train
from binexp.errors import without_search_path
from binexp.models import build_model


def gradient_norms(experiment: str, nus: list[float], batch: int, seed: int) -> dict[float, dict[str, float]]:
    cfg = compose_train([f"experiment={experiment}", "dataset=synthetic"])
    torch.manual_seed(seed)
    shape = (3, 32, 32)  # CIFAR-10's, as every SBN experiment's (the data are random: dataset=synthetic)
    net = build_model(cfg.architecture, build(cfg.method), shape, 10).train()
    x, y = torch.randn(batch, *shape), torch.randint(0, 10, (batch,))
    out = {}
    for nu in nus:
        if write_buffers(net, {"nu": nu}) == 0:
            raise ValueError(f"experiment={experiment} (method={cfg.method.name}) has no nu to set: "
                             "it is not an SBN experiment (sbn_table1_sbn_bc, _bnn, _bwn, _xnor are)")
        net.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        out[nu] = {name: p.grad.norm().item() for name, p in net.named_parameters() if p.dim() > 1}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", nargs="+", default=["sbn_table1_sbn_bnn", "sbn_table1_sbn_bc"])
    parser.add_argument("--nu", nargs="+", type=float, default=[1, 10, 100, 1000])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.batch < 1:
        parser.error(f"--batch {args.batch}: allowed is a count >= 1")
    for experiment in args.experiment:
        try:
            norms = gradient_norms(experiment, args.nu, args.batch, args.seed)
        except (HydraException, ValueError) as e:
            parser.error(without_search_path(e))
        layers = list(next(iter(norms.values())))
        print(f"{experiment}: gradient norm of each latent weight")
        print("nu".rjust(6) + "".join(name.removesuffix(".weight").rjust(14) for name in layers))
        for nu, row in norms.items():
            print(f"{nu:6g}" + "".join(f"{row[name]:14.3g}" for name in layers))


if __name__ == "__main__":
    main()
