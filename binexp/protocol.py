"""The evaluation protocol of the ABR paper, for any method whose layers have a step form.

- `regular`: test accuracy of the network as trained (continuous activations).
- `binary`: every layer with a step form replaced by it (`step_mode`), no retraining.
- `finetuned`: only the final classifier retrained on the frozen binary features (Table 1/2's "Finetuned").
- `binary_bn_reestimated` (optional, `protocol.bn_batches` > 0): `binary` with the BN statistics re-estimated on the
  binary network itself (training batches in step mode, no gradient step), on a copy: the run's own checkpoints keep
  the trained statistics, and the copy is saved as `checkpoints/bn_reestimated.ckpt`, so `binexp export <run>
  ckpt=bn_reestimated` deploys it. Where the step form changes what a BN sees (SBN's sign(P) in place of tanh(nu P)
  for latent weights still near 0), the statistics gathered in training no longer fit it.
- `binary_fixed_bn` (`protocol.bn_bits` > 0, networks with BinaryBN layers): `binary` with each BinaryBN's threshold
  T as a `bn_bits`-bit fixed-point code (SBN Sec. 4.3: "we represent it as a fixed-point 8-bit integer ... no negative
  effect"), the fraction bits per layer from the largest BN input over `bn_range_batches` training batches; and
  `fixed_bn_flips`, the share of BinaryBN outputs over the test set that differ from the float form. Per layer in
  `fixed_bn.json` in the run directory.
- `binary_weights` (Section 4.4, optional): every weight but the first layer's thresholded to +-1 and frozen,
  biases and the method's other parameters (ABR slopes) finetuned, then tested in step mode; that network is
  saved as `checkpoints/binary_weights.ckpt`, so `binexp export <run> ckpt=binary_weights` deploys it.

`PhaseEvaluation` records `regular` and `binary` at the end of each schedule milestone (ABR's phase 1), so
Table 1's "1st Phase / 1st Binary" come from the same run as "2nd Phase / 2nd Binary".

Under DDP every rank evaluates its shard of the test set and the counts are summed (features gathered in
dataset order for the finetuning), so the numbers equal one process's.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from binexp.atomic_files import torch_save
from binexp.binarize.base import BinaryWeights, evaluating, step_mode
from binexp.binarize.binary_bn import (
    BinaryBN,
    _BinaryBNStepForm,
    binary_bn_layers,
    fixed_point_outputs,
    input_ranges,
)
from binexp.binarize.functional import SignActivation, binary_sign
from binexp.distributed import gather_in_order, share_rank_zero_buffers, sum_over_shards
from binexp.errors import ConfigError

log = logging.getLogger(__name__)

BINARY_WEIGHTS_KEY = "binary_weights"  # marks a Section 4.4 checkpoint; also its name: checkpoints/binary_weights.ckpt
BN_REESTIMATED_KEY = "bn_reestimated"  # likewise for the deployed network with re-estimated BN statistics
# the networks the protocol derives from a trained one and saves beside its checkpoints: name -> when it is saved
DERIVED_CHECKPOINTS = {
    BINARY_WEIGHTS_KEY: "Section 4.4's network, saved when protocol.binary_weights_epochs > 0",
    BN_REESTIMATED_KEY: "the step-form network with BN statistics re-estimated, saved when protocol.bn_batches > 0",
}


@dataclass
class ProtocolConfig:
    enabled: bool = True
    finetune_epochs: int = 10  # epochs of classifier retraining on cached binary features
    finetune_lr: float = 1e-3  # Adam
    binary_weights_epochs: int = 0  # Section 4.4: > 0 runs it (bias and slopes finetuned this many epochs)
    binary_weights_lr: float = 1e-3  # Adam
    bn_batches: int = 0  # > 0: protocol/binary_bn_reestimated, BN statistics from this many training batches
    bn_bits: int = 8  # > 0: protocol/binary_fixed_bn, BinaryBN thresholds as codes of this many bits; 0: off
    bn_range_batches: int = 10  # training batches whose BN inputs set each layer's fixed-point range

    def __post_init__(self) -> None:
        if self.bn_bits != 0 and not 2 <= self.bn_bits <= 32:
            raise ConfigError(f"protocol.bn_bits={self.bn_bits}: allowed are 0 (off) or 2..32 bits per threshold code")
        if self.bn_bits and self.bn_range_batches < 1:
            raise ConfigError(f"protocol.bn_range_batches={self.bn_range_batches}: allowed is a count >= 1 "
                              "(training batches that set the fixed-point range; protocol.bn_bits=0 turns it off)")


def protocol_config(run_cfg: DictConfig) -> ProtocolConfig:
    """A run's protocol settings, merged onto the schema: a saved run config is plain YAML and may predate keys."""
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ProtocolConfig), run_cfg.get("protocol") or {}))


def derived_checkpoint_path(run_dir: Path, name: str) -> Path:
    return run_dir / "checkpoints" / f"{name}.ckpt"


def has_step_form(net: nn.Module) -> bool:
    """Layers with a step form, or binary already (sign activations, sign weights): the protocol's `binary`
    accuracy is defined, and equals `regular` for a network with nothing left to step (STE's without a BN before
    its signs, BinaryConnect's)."""
    return any(hasattr(m, "step") or isinstance(m, (SignActivation, BinaryWeights)) for m in net.modules())


def nothing_to_step(net: nn.Module) -> bool:
    """Binary already: no layer whose step form is another function (ABR's rectifiers, SBN's tanh, the baseline's
    thresholded ReLUs), only BinaryBN, which is sign(BN(x)) exactly; so step mode must not change a prediction."""
    return not any(hasattr(m, "step") and not isinstance(m, _BinaryBNStepForm) for m in net.modules())


def classifier_of(net: nn.Module) -> nn.Linear:
    """The network's final classifier: its last nn.Linear (every architecture ends in one)."""
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(net).__name__} has no nn.Linear classifier to finetune")
    return linears[-1]


def first_layer_of(net: nn.Module) -> nn.Module:
    return next(m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


def accuracy(net: nn.Module, batches: Iterable, step: bool = False) -> float:
    """Share of correct predictions; over all ranks when `batches` is one rank's shard."""
    counts = torch.zeros(2, dtype=torch.long, device=_device(net))  # correct, seen
    with evaluating(net, step):
        for x, y in batches:
            counts[0] += (net(x).argmax(1) == y).sum()
            counts[1] += len(y)
    correct, total = sum_over_shards(counts, batches).tolist()
    return correct / max(total, 1)


def reestimate_bn(net: nn.Module, batches: Iterable, count: int, step: bool = False) -> nn.Module:
    """Every BN's running statistics replaced by the plain average over the first `count` of `batches`, the network
    in training mode (in step mode when `step`), no gradients; returns the network in eval mode."""
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    net.train()
    try:
        with torch.no_grad(), (step_mode(net) if step else contextlib.nullcontext()):
            for _, (x, _y) in zip(range(count), batches):
                net(x)
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
    return net.eval()


def bn_reestimated_network(net: nn.Module, train: Iterable, count: int) -> nn.Module:
    """A copy of `net` (left as it is) with its BN statistics re-estimated in step mode on `count` batches."""
    return reestimate_bn(copy.deepcopy(net), train, count, step=True)


def bn_reestimated_accuracy(net: nn.Module, train: Iterable, test: Iterable, count: int) -> float:
    """Step-form accuracy once the BN statistics are re-estimated in step mode, on a copy of `net` (left as it is)."""
    return accuracy(bn_reestimated_network(net, train, count), test, step=True)


def fixed_point_bn(net: nn.Module, train: Iterable, test: Iterable, bits: int, range_batches: int
                   ) -> tuple[float, dict[str, dict[str, Any]]]:
    """Step-form test accuracy with every BinaryBN threshold as a `bits`-bit fixed-point code, each layer's
    fraction bits from the largest input it sees over the first `range_batches` of `train` (the network in step
    mode, eval), rounded towards the comparison where those inputs all lay on the codes' grid (a binary layer's
    integer, often even, sums); and per layer: its fraction bits, that range, the power-of-two grid its inputs lay
    on (0: not integers), and the test outputs that differ from the float form."""
    layers = binary_bn_layers(net)
    with evaluating(net, step=True), input_ranges(layers) as ranges:
        for _, (x, _y) in zip(range(range_batches), train):
            net(x)
    seen = {name: (ranges[name].largest.item(), ranges[name].grid.item()) for name in layers}
    forms = {name: BinaryBN.from_batchnorm(m).quantize(bits, *seen[name]) for name, m in layers.items()}
    with fixed_point_outputs(layers, forms) as counts:
        acc = accuracy(net, test, step=True)
    counts = sum_over_shards(counts, test).tolist()
    per_layer = {
        name: {"fraction_bits": forms[name].fraction_bits, "data_range": seen[name][0], "input_grid": seen[name][1],
               "flips": flips, "values": values}
        for name, (flips, values) in zip(layers, counts)
    }
    return acc, per_layer


def classifier_inputs(net: nn.Module, batches: Iterable) -> tuple[torch.Tensor, torch.Tensor]:
    """The classifier's inputs (the last hidden features) in step mode, and the labels, over all batches
    (of every rank, in dataset order, when `batches` is a shard)."""
    features, labels = [], []
    handle = classifier_of(net).register_forward_pre_hook(lambda _m, args: features.append(args[0].detach().flatten(1)))
    try:
        with evaluating(net, step=True):
            for x, y in batches:
                net(x)
                labels.append(y)
    finally:
        handle.remove()
    return gather_in_order(torch.cat(features), batches), gather_in_order(torch.cat(labels), batches)


def train_params(
    forward: Callable[[torch.Tensor], torch.Tensor], params: list[nn.Parameter], batches: Callable[[int], Iterable],
    epochs: int, lr: float, after_step: Callable[[], None] | None = None,
) -> None:
    """A plain Adam loop for the protocol's small finetuning jobs; `batches(epoch)` yields (x, y)."""
    opt = torch.optim.Adam(params, lr=lr)
    for epoch in range(epochs):
        for x, y in batches(epoch):
            loss = F.cross_entropy(forward(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if after_step is not None:
                after_step()


def finetuned_accuracy(net: nn.Module, dm, cfg: ProtocolConfig, seed: int = 0) -> float:
    """Retrain a copy of the classifier on the frozen step-mode features; test accuracy with it."""
    train_x, train_y = classifier_inputs(net, dm.batches("train", device=_device(net)))
    test_x, test_y = classifier_inputs(net, dm.batches("test", device=_device(net)))
    head = copy.deepcopy(classifier_of(net))
    batch = dm.batch_size
    g = torch.Generator().manual_seed(seed)

    def batches(epoch: int):
        order = torch.randperm(len(train_y), generator=g).to(train_x.device)
        for i in range(0, len(order), batch):
            idx = order[i : i + batch]
            yield train_x[idx], train_y[idx]

    head.train()  # as trained, and tested as deployed: not in whatever mode the caller left the network
    with torch.enable_grad():
        train_params(head, list(head.parameters()), batches, cfg.finetune_epochs, cfg.finetune_lr)
    with evaluating(head, step=True):  # a classifier with its own BN (SBN's output_norm) on its running statistics
        return (head(test_x).argmax(1) == test_y).double().mean().item()


class _FrozenSigns(BinaryWeights):
    """A plain layer whose weights were set to exactly +-1 and frozen (Section 4.4): signs() is the weight itself,
    so size tables count it at 1 bit per weight and export packs it like any binary layer.

    `sign_scale` (frozen) is the mean |W| the signs replaced: a unit computes sign(W).x * scale + b, which a step
    function thresholds exactly where it thresholds sign(W).x + b/scale, so in step mode it is the paper's +-1
    layer with the bias rescaled. Without it the signs multiply every pre-activation by about 1/mean|W| (100x for
    cifar10_quick) and the biases, slopes and later layers no longer fit the network they were trained in."""

    def signs(self) -> torch.Tensor:
        return self.weight


class FrozenSignConv2d(_FrozenSigns, nn.Conv2d):
    pass


class FrozenSignLinear(_FrozenSigns, nn.Linear):
    pass


def sign_scale(weight: torch.Tensor, per_unit: bool) -> torch.Tensor:
    """The least-squares scale of sign(W): mean |W| per output unit, or one for the layer (a classifier's units
    are compared with each other, so one scale keeps its argmax that of +-1 weights)."""
    magnitude = weight.detach().abs()
    return magnitude.flatten(1).mean(1) if per_unit else magnitude.mean()


def freeze_sign_weights(net: nn.Module) -> list[nn.Parameter]:
    """Section 4.4 in place: every conv / linear weight but the first layer's set to sign(W) and frozen. Plain
    layers are also marked binary, with their mean |W| as a frozen output scale; layers of binarizing methods
    already are, and the scales the method derives from W (BWN/XNOR's alpha, FB's mean |W|, B's input-gradient
    scale) are frozen at their trained values before W becomes +-1. Returns the frozen weights."""
    first, classifier = first_layer_of(net), classifier_of(net)
    frozen = []
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and m is not first:
            if type(m) in (nn.Conv2d, nn.Linear):
                m.register_buffer("sign_scale", sign_scale(m.weight, per_unit=m is not classifier).clone())
                m.__class__ = FrozenSignConv2d if type(m) is nn.Conv2d else FrozenSignLinear
            elif isinstance(m, BinaryWeights):
                m.freeze_scales()
            with torch.no_grad():
                m.weight.copy_(binary_sign(m.weight))
            m.weight.requires_grad_(False)
            frozen.append(m.weight)
    return frozen


def binary_weights_network(net: nn.Module, method, dm, cfg: ProtocolConfig) -> nn.Module:
    """Section 4.4 on a copy: weights but the first layer's set to sign(W) and frozen, the first layer's kept real
    and frozen too ("We leave the conv1 parameters to be real values ... Then we finetune the bias and slope
    parameters"); biases, BN and the method's own parameters (ABR slopes) finetuned."""
    net = copy.deepcopy(net)
    frozen = {id(w) for w in freeze_sign_weights(net)} | {id(first_layer_of(net).weight)}
    trainable = [p for p in net.parameters() if id(p) not in frozen]
    # every rank repeats this small job on the whole data: the same result as one process, no gradient sync
    loader = dm.batches("train", train=True, device=_device(net), shard=False)

    def batches(epoch: int):
        loader.set_epoch(epoch)
        return loader

    net.train()
    with torch.enable_grad():
        train_params(net, trainable, batches, cfg.binary_weights_epochs, cfg.binary_weights_lr,
                     after_step=lambda: method.after_optimizer_step(net))
    return net.eval()


def _device(net: nn.Module) -> torch.device:
    return next(net.parameters()).device


def save_derived(net: nn.Module, run_dir: Path, name: str) -> None:
    """A checkpoint `binexp eval/export ... ckpt=<name>` rebuilds (for binary_weights `load_trained` freezes the same
    layers)."""
    path = derived_checkpoint_path(run_dir, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch_save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}, name: True}, path)


def check_protocol_fits(net: nn.Module, cfg: ProtocolConfig, network: str) -> None:
    """protocol.bn_batches on a network without batch norm wrote a re-estimated accuracy identical to
    protocol/binary, and a checkpoint that re-estimated nothing."""
    if cfg.enabled and cfg.bn_batches > 0 and has_step_form(net) and \
            not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules()):
        raise ConfigError(f"protocol.bn_batches={cfg.bn_batches}: the network of {network} has no batch norm to "
                          f"re-estimate; allowed here is 0")


def run_protocol(net: nn.Module, method, dm, cfg: ProtocolConfig, seed: int = 0,
                 save_to_run: Path | None = None) -> dict[str, float]:
    """The protocol's metrics; the networks it derives (Section 4.4's, the BN re-estimated one) are also saved into
    the run directory `save_to_run` (DERIVED_CHECKPOINTS)."""
    if not cfg.enabled or not has_step_form(net):
        return {}
    test = dm.batches("test", device=_device(net))
    if len(test) == 0:  # trainer.limit_test_batches=0: no test, so no protocol either
        log.info("protocol skipped: trainer.limit_test_batches leaves no test batches")
        return {}
    out = {"protocol/regular": accuracy(net, test), "protocol/binary": accuracy(net, test, step=True)}
    if out["protocol/binary"] != out["protocol/regular"] and nothing_to_step(net):
        log.warning("step mode changed the test accuracy of a network with nothing to step (%.4f -> %.4f): a layer "
                    "computes in training what its step form does not (a SignActivation's binarize() must be sign "
                    "in the forward, a shift goes in its `threshold`); `binexp export` names such a layer",
                    out["protocol/regular"], out["protocol/binary"])
    if cfg.bn_batches > 0:  # every rank the same shuffled batches, so the statistics agree across ranks
        train = dm.batches("train", train=True, device=_device(net), shard=False)
        reestimated = bn_reestimated_network(net, train, cfg.bn_batches)
        out["protocol/binary_bn_reestimated"] = accuracy(reestimated, test, step=True)
        if save_to_run is not None:
            save_derived(reestimated, save_to_run, BN_REESTIMATED_KEY)
    if cfg.bn_bits > 0 and binary_bn_layers(net):  # every rank the same range batches, so the same codes
        train = dm.batches("train", train=True, device=_device(net), shard=False)
        out["protocol/binary_fixed_bn"], per_layer = fixed_point_bn(net, train, test, cfg.bn_bits, cfg.bn_range_batches)
        flips, values = (sum(layer[k] for layer in per_layer.values()) for k in ("flips", "values"))
        out["protocol/fixed_bn_flips"] = flips / values
        log.info("BinaryBN with %d-bit thresholds: %d of %d outputs differ (%s)", cfg.bn_bits, flips, values,
                 ", ".join(f"{name} {layer['flips']}" for name, layer in per_layer.items()))
        if save_to_run is not None:
            (save_to_run / "fixed_bn.json").write_text(json.dumps({"bits": cfg.bn_bits, "layers": per_layer}, indent=2) + "\n")
    if cfg.finetune_epochs > 0:
        out["protocol/finetuned"] = finetuned_accuracy(net, dm, cfg, seed)
    if cfg.binary_weights_epochs > 0:
        binary = binary_weights_network(net, method, dm, cfg)
        out["protocol/binary_weights"] = accuracy(binary, dm.batches("test", device=_device(net), shard=False), step=True)
        if save_to_run is not None:
            save_derived(binary, save_to_run, BINARY_WEIGHTS_KEY)
    return out


class PhaseEvaluation(pl.Callback):
    """At the end of each schedule milestone epoch, the test accuracy regular and binary (kept in checkpoints)."""

    def __init__(self, milestones: dict[str, int]):
        self.milestones = milestones  # name -> number of epochs after which it is reached
        self.results: dict[str, float] = {}

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        for name, epochs in self.milestones.items():
            if trainer.current_epoch + 1 == epochs:
                test = trainer.datamodule.batches("test")
                if len(test) == 0:  # trainer.limit_test_batches=0
                    continue
                share_rank_zero_buffers(pl_module.net)
                found = {
                    f"protocol/{name}_regular": accuracy(pl_module.net, test),
                    f"protocol/{name}_binary": accuracy(pl_module.net, test, step=True),
                }
                self.results.update(found)
                for logger in trainer.loggers:
                    logger.log_metrics(found, step=trainer.global_step)
                log.info("end of %s: %s", name, found)

    def state_dict(self) -> dict:
        return {"results": dict(self.results)}

    def load_state_dict(self, state: dict) -> None:
        self.results = dict(state.get("results", {}))
