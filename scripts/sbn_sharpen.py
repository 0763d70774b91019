"""Does an SBN network survive sharpening? A checkpoint evaluated at larger nu with the same weights (RESULTS, SBN).

Loads a run's checkpoint, then for each nu: writes nu into every layer, measures test accuracy with the saved BN
statistics, re-estimates the BN statistics at that nu on training batches (no gradient step) and measures again.
If accuracy falls with nu even with fresh BN statistics, training has to repair what sharpening breaks; if the run
itself then ends below these numbers, its updates at those nu did harm. The last line is the deployed network
(sign weights and activations, BinaryBN), first with the saved BN statistics, then with them re-estimated on the
deployed network itself. The two lines before it switch only the weights (sign(P), activations still tanh) or only
the activations (sign(x), weights still tanh(nu P)) to their step form, to say which of the two the switch costs.

    python scripts/sbn_sharpen.py <run dir> --ckpt best --nu 10 30 100 1000
"""

from __future__ import annotations

import argparse
from pathlib import Path

from torch import nn

from binexp.binarize.sbn import ScaledTanh, SoftBinaryConv2d, SoftBinaryLinear
from binexp.callbacks.schedule import write_buffers
from binexp.errors import ConfigError
from binexp.evaluate import load_trained
from binexp.protocol import accuracy, bn_reestimated_accuracy, reestimate_bn


def partial_step_accuracy(net: nn.Module, test: list, kinds: tuple[type, ...]) -> float:
    """Test accuracy with only the layers of `kinds` in their step form (BN stays float BN + sign)."""
    layers = [m for m in net.modules() if isinstance(m, kinds)]
    for m in layers:
        m.step = True
    try:
        return accuracy(net, test)
    finally:
        for m in layers:
            m.step = False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--ckpt", default="best", help="last, best or a path")
    parser.add_argument("--nu", nargs="+", type=float, default=[10, 30, 100, 1000])
    parser.add_argument("--bn-batches", type=int, default=40, help="training batches for the BN statistics")
    parser.add_argument("--set", nargs="*", default=[], help="dotted overrides of the run's config, e.g. dataset.root=...")
    args = parser.parse_args()
    if args.bn_batches < 1:
        parser.error(f"--bn-batches {args.bn_batches}: allowed is a count >= 1 (BN statistics need a batch)")

    try:
        _, dm, module, path = load_trained(args.run, args.ckpt, args.set)
    except ConfigError as e:
        parser.error(str(e))
    nus = [buf for name, buf in module.net.named_buffers() if name.rpartition(".")[2] == "nu"]
    if not nus:
        parser.error(f"{args.run} is not an SBN run: its network has no nu to sharpen")
    dm.setup("fit")
    net = module.net.eval()
    test = list(dm.test_dataloader())
    train = [batch for _, batch in zip(range(args.bn_batches), dm.train_dataloader())]
    own = nus[0].item()
    saved = {k: v.clone() for k, v in net.state_dict().items()}
    print(f"{path}: trained up to nu {own:.3g}")
    print("nu".rjust(8) + "saved BN".rjust(12) + "BN at this nu".rjust(16))
    for nu in [own, *args.nu]:
        net.load_state_dict(saved)
        write_buffers(net, {"nu": nu})
        as_saved = accuracy(net, test)
        reestimate_bn(net, train, len(train))
        print(f"{nu:8.3g}{100 * as_saved:12.2f}{100 * accuracy(net, test):16.2f}")
    net.load_state_dict(saved)
    weights_only = partial_step_accuracy(net, test, (SoftBinaryConv2d, SoftBinaryLinear))
    print(f"sign weights only (tanh activations): {100 * weights_only:.2f}")
    print(f"sign activations only (tanh weights): {100 * partial_step_accuracy(net, test, (ScaledTanh,)):.2f}")
    print(f"step mode (sign, BinaryBN): saved BN {100 * accuracy(net, test, step=True):.2f}, "
          f"BN re-estimated in step mode {100 * bn_reestimated_accuracy(net, train, test, len(train)):.2f}")


if __name__ == "__main__":
    main()
