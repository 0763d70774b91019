#!/usr/bin/env bash
# Reproduce the ABR paper's Tables 1 and 2, Section 4.4 and Figures 2 / 4 left with binexp, then tabulate.
# cifar10_quick is small: a CIFAR-10 row (40 epochs) takes about 35 minutes on 2 CPU cores; MNIST rows about 20 (the ABR MNIST row, 48 epochs, about 40).
#   BINEXP_DATA=../shared/data bash scripts/reproduce_abr.sh [mnist|cifar10|all] [overrides for every run, e.g. trainer=gpu]
# Each run lands in logs/abr/<name>/; `binexp report logs/abr` prints the table next to the paper's columns
# (protocol/phase1_regular = "1st Phase", phase1_binary = "1st Binary", regular = "2nd Phase", binary = "2nd Binary",
# finetuned = "Finetuned") and draws the binarization curves of every ABR run.
set -euo pipefail
which=${1:-all}
case $which in
  mnist|cifar10|all) (( $# )) && shift ;;
  *) echo "reproduce_abr.sh: first argument '$which': allowed are mnist, cifar10, all (then overrides)" >&2; exit 2 ;;
esac
extra=("$@")
out=${BINEXP_LOGS:-logs}/abr
# shellcheck source=scripts/run_each.sh
source "$(dirname "$0")/run_each.sh"

if [[ $which == mnist || $which == all ]]; then
  run table1_mnist_baseline experiment=abr_table1_mnist_baseline
  run table1_mnist experiment=abr_table1_mnist
fi
if [[ $which == cifar10 || $which == all ]]; then
  run table1_cifar10_baseline experiment=abr_table1_cifar10_baseline
  run table1_cifar10 experiment=abr_table1_cifar10
  run table2_cifar10_baseline experiment=abr_table2_cifar10_baseline
  run table2_cifar10 experiment=abr_table2_cifar10
  run table2_cifar10_2x experiment=abr_table2_cifar10 architecture.width=2
  for w in 1 2; do run "sec44_cifar10_${w}x" experiment=abr_sec44_cifar10 architecture.width=$w; done
  # at 4x, lr 2e-3 saturates every fc1 unit within the first epoch (the collapse guard stops the run)
  run sec44_cifar10_4x experiment=abr_sec44_cifar10 architecture.width=4 optimizer.lr=1e-3
fi
binexp report "$out" || { r=$?; (( rc )) || rc=$r; }
exit "$rc"
