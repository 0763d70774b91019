#!/usr/bin/env bash
# BMXNet Figure 4a on CIFAR-10: a t_clip sweep of the binary ResNet-18, then the accuracy-vs-t_clip table and plot.
#   BINEXP_DATA=../shared/data bash scripts/sweep_tclip.sh [extra overrides, e.g. trainer.max_epochs=30]
# An interrupted sweep goes on where it stopped (finished jobs are skipped, stopped ones resume from last.ckpt),
# given the same extra overrides as at its start:
#   bash scripts/sweep_tclip.sh [the same extra overrides] hydra.sweep.dir=logs/sweeps/tclip-<time>
# Then the N/B/FB scaling comparison on the same network:
#   binexp train -m experiment=ste_cifar10_resnet18 method.scaling=none,backward,forward_backward
set -euo pipefail
out=${BINEXP_LOGS:-logs}/sweeps/tclip-$(date +%Y-%m-%d_%H-%M-%S)
dir_given=false
for arg in "$@"; do
  if [[ $arg == hydra.sweep.dir=* ]]; then out=${arg#hydra.sweep.dir=}; dir_given=true; fi
done
$dir_given || set -- "$@" hydra.sweep.dir="$out"
rc=0
binexp train -m experiment=ste_cifar10_resnet18 method.t_clip=0.1,0.25,0.5,0.75,1.0,1.5,2.0 \
  callbacks.rich_progress_bar=null "$@" || rc=$?
# the table and plot of the jobs that finished, also when one diverged (binexp's exit 3 names it)
binexp report "$out" || { r=$?; (( rc )) || rc=$r; }
exit "$rc"
