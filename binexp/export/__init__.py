"""Deployable binary models: a trained network's step-function form, bit-packed in one file, with a reference
runtime that computes it by xnor/and + popcount, and a check that it predicts what the trained network predicts.

- `binexp.export.lower`: the network -> a list of ops (thresholds, packed binary layers, float layers).
- `binexp.export.artifact`: the file (safetensors + JSON manifest with checksums).
- `binexp.export.runtime`: executes it; `binexp.export.popcount`: the compiled kernel or numpy.
- `binexp.export.commands`: `binexp export` and `binexp verify`.
"""
