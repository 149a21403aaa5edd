"""Test sets in BasicSR layout, the MATLAB-exact bicubic, LR generation (see datasets/README.md).

`bench.data.calib` (calibration patches from training images) lives here too.
"""
from bench.data.dataset import SRDataset, SRPair, list_datasets, load_dataset
from bench.data.imresize import imresize

__all__ = ["SRDataset", "SRPair", "imresize", "list_datasets", "load_dataset"]
