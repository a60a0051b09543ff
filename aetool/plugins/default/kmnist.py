"""Built-in data set `kmnist`: Kuzushiji-MNIST, ten classes of cursive Japanese (hiragana).

Fetched with torchvision's downloader from its mirrors (MD5-checked), then read with the same
IDX checks as MNIST. Offline, put the four files from https://github.com/rois-codh/kmnist in
`DATA/KMNIST/raw/`.
"""

from __future__ import annotations

from aetool.data import DATASETS, idx_dataset
from aetool.plugins.hookspecs import hookimpl


@hookimpl
def register_datasets(register):
    register(idx_dataset(DATASETS["kmnist"], "Kuzushiji-MNIST: 10 classes of cursive Japanese "
                                             "characters, 60,000 training and 10,000 test."))
