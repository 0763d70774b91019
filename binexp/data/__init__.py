"""Datasets as uint8 tensors served in batches from the training device.

One module per source (mnist, cifar10, imagefolder, synthetic); each decodes its images once into a `Split`
and `ImageData` (datamodule.py) does the rest: validation hold-out, subsets, input normalisation, and
`DeviceBatches` (loader.py) that shuffle, crop and flip on the device — no DataLoader workers.
"""
