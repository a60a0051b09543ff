"""Built-in data sets `emnist` (the balanced split) and `emnist-letters`.

Both come from EMNIST's one zip archive, fetched with torchvision's downloader (URL and MD5 as
torchvision has them); the IDX files are read with MNIST's checks and each image is turned
upright (EMNIST stores them transposed). Offline, put the files
(`emnist-balanced-train-images-idx3-ubyte`, ...) in `DATA/EMNIST/raw/`.
"""

from __future__ import annotations

from aetool.data import DATASETS, idx_dataset
from aetool.plugins.hookspecs import hookimpl


@hookimpl
def register_datasets(register):
    register(idx_dataset(DATASETS["emnist"], "EMNIST balanced: 47 classes of handwritten digits "
                                             "and letters, 112,800 training and 18,800 test."))
    register(idx_dataset(DATASETS["emnist-letters"], "EMNIST letters: a-z (labels 1-26), "
                                                     "124,800 training and 20,800 test."))
