"""Training: the loop (`loop`), one epoch (`step`), the time budget (`budget`), many
models at once (`batched`), resuming (`resume`) and the faster modes (`fast/`)."""
