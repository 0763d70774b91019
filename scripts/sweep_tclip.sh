#!/usr/bin/env bash
# BMXNet Figure 4a on CIFAR-10: a t_clip sweep of the binary ResNet-18, then the accuracy-vs-t_clip table and plot.
#   BINEXP_DATA=../shared/data bash scripts/sweep_tclip.sh [extra overrides, e.g. trainer.max_epochs=30]
# Then the N/B/FB scaling comparison on the same network:
#   binexp train -m experiment=ste_cifar10_resnet18 method.scaling=none,backward,forward_backward
set -euo pipefail
out=${BINEXP_LOGS:-logs}/sweeps/tclip-$(date +%Y-%m-%d_%H-%M-%S)
binexp train -m experiment=ste_cifar10_resnet18 method.t_clip=0.1,0.25,0.5,0.75,1.0,1.5,2.0 \
  hydra.sweep.dir="$out" callbacks.rich_progress_bar=null "$@"
binexp report "$out"
