#!/usr/bin/env bash
# Reproduce the SBN paper's Table 1, CIFAR-10 column, with binexp: full precision, the four hard baselines
# (BC, BWN, BNN, XNOR) and SBN applied to each, on the VGG-16-like network (100 epochs each: wants a GPU), then
# tabulate.
#   BINEXP_DATA=../shared/data bash scripts/reproduce_sbn.sh [overrides for every run, e.g. trainer=gpu]
# Each run lands in logs/sbn/<name>/. In `binexp report logs/sbn` the table's number is test/acc for fp, bc, bwn,
# bnn and xnor, and protocol/binary (sign(P) weights, sign activations, BinaryBN: the deployed network) for the
# sbn_* rows; its "against the papers" table (paper.csv) sets each beside the paper's number (the experiments'
# `paper:` blocks).
set -euo pipefail
out=${BINEXP_LOGS:-logs}/sbn
extra=("$@")
# shellcheck source=scripts/run_each.sh
source "$(dirname "$0")/run_each.sh"

run fp experiment=sbn_table1_fp
for base in bc bwn bnn xnor; do
  run "$base" experiment=sbn_table1_$base
  run "sbn_$base" experiment=sbn_table1_sbn_$base
done
binexp report "$out" || { r=$?; (( rc )) || rc=$r; }
exit "$rc"
