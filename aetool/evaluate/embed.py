"""The latent space of a trained autoencoder: its codes, a 2-D picture of them, separation scores.

`embed_model` encodes images in batches on the model's device, standardizes the codes
(`StandardScaler`) and projects them to 2-D (`PCA(2)` as in the seed report; t-SNE on request).
It also puts a number on how well the true classes separate in the latent space, so that a
claim like "ED=4 separates the digits better than ED=32" can be checked, not only looked at:

- the silhouette score of the standardized codes, by true label (on a seeded sample when the
  set is large; -1 to 1, higher means tighter, better separated classes);
- the accuracy of a k-nearest-neighbour classifier on the codes (stratified k-fold
  cross-validation over the encoded images; scaling is fitted inside each fold);
- the same two scores on each 2-D projection, i.e. on what the scatter plot shows.

`embed_run` does this for a run folder and saves `embedding.npz` (codes, labels, projection),
one scatter plot per method (`latent_pca.png`, `latent_tsne.png`) and `embedding.json` there.
A data set without labels is plotted in one colour, without scores, and its summary says so.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aetool import workspace as runs
from aetool.data import ImageData, check_unchanged, load_dataset, to_float
from aetool.errors import AetoolError, ProgressEvent, ProgressFn, first_line
from aetool.files import write_atomic

METHODS = ("pca", "tsne")
METHOD_NAMES = {"pca": "PCA", "tsne": "t-SNE"}
SILHOUETTE_SAMPLE = 5000  # silhouette costs O(n^2): score a seeded sample of this many codes
KNN_NEIGHBORS = 5
KNN_FOLDS = 5
PLOT_DPI = 90
NO_LABELS = ("The data set has no labels: the latent plot has no colours and there are no "
             "class scores.")


def plot_name(method: str) -> str:
    return runs.embedding_plot(method)


@dataclass
class Embedding:
    """Codes of a set of images, their 2-D projections and how well their classes separate."""

    encoding_dim: int
    codes: np.ndarray  # (N, ED) float32, as the encoder outputs them
    labels: np.ndarray | None  # (N,) int64 true classes; None for a data set without labels
    classes: tuple[str, ...] | None  # class names, indexed by label
    projections: dict[str, np.ndarray]  # method -> (N, 2), in the order asked for
    explained_variance: list[float]  # PCA's two explained-variance ratios (standardized codes)
    silhouette: float | None  # on the standardized codes, by true label (None: no labels)
    knn_accuracy: float | None  # k-NN accuracy on the codes, cross-validated
    projection_scores: dict[str, dict[str, float]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)  # k, folds, sample size, seed

    @property
    def methods(self) -> list[str]:
        return list(self.projections)

    def summary(self) -> dict[str, Any]:
        """What `embedding.json` holds (less the file names, which `save_embedding` adds)."""
        return {
            "ed": self.encoding_dim,
            "method": self.methods[0],
            "methods": self.methods,
            "images": int(self.codes.shape[0]),
            "classes": list(self.classes) if self.classes is not None else None,
            "explained_variance": self.explained_variance,
            "silhouette": self.silhouette,
            "knn_accuracy": self.knn_accuracy,
            "projection_scores": self.projection_scores,
            **self.settings,
            **({} if self.labels is not None else {"note": NO_LABELS}),
        }


# --------------------------------------------------------------------------- encoding


@torch.no_grad()
def encode_images(
    model: torch.nn.Module, images: torch.Tensor, batch_size: int = 2000
) -> np.ndarray:
    """uint8 images (N, 1, 28, 28) -> codes (N, ED) as float32 numpy, encoded on the model's
    device in batches (the images move there once, as one tensor)."""
    if images.ndim != 4 or images.shape[0] == 0:
        raise AetoolError(f"Expected a batch of images (N, 1, 28, 28), got {tuple(images.shape)}.")
    device = next(model.parameters()).device
    images = images.to(device)
    was_training = model.training
    model.eval()
    codes = [model.encode(to_float(images[s : s + batch_size]))
             for s in range(0, images.shape[0], batch_size)]
    model.train(was_training)
    return torch.cat(codes).float().cpu().numpy()


# --------------------------------------------------------------------------- scores


def _check_labels(labels: np.ndarray) -> None:
    classes = np.unique(labels)
    if classes.size < 2 or labels.size < 3:
        raise AetoolError(
            f"Separation scores need at least two classes and three images; got {classes.size} "
            f"class(es) in {labels.size} image(s)."
        )


def silhouette(
    points: np.ndarray, labels: np.ndarray, sample: int = SILHOUETTE_SAMPLE, seed: int = 0
) -> float:
    """Mean silhouette of `points` grouped by true label, on a seeded sample if there are many."""
    from sklearn.metrics import silhouette_score

    _check_labels(labels)
    size = sample if 0 < sample < labels.size else None
    return float(silhouette_score(points, labels, sample_size=size, random_state=seed))


def knn_accuracy(
    points: np.ndarray,
    labels: np.ndarray,
    neighbors: int = KNN_NEIGHBORS,
    folds: int = KNN_FOLDS,
    seed: int = 0,
) -> float:
    """Mean accuracy of a `neighbors`-NN classifier under stratified `folds`-fold
    cross-validation; each fold standardizes with its own training part."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    _check_labels(labels)
    smallest = int(np.unique(labels, return_counts=True)[1].min())
    folds = max(2, min(folds, smallest))
    neighbors = max(1, min(neighbors, labels.size - labels.size // folds - 1))
    pipeline = make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=neighbors))
    split = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "least populated class has n members"
        scores = cross_val_score(pipeline, points, labels, cv=split)
    return float(scores.mean())


# --------------------------------------------------------------------------- projections


def pca_projection(standardized: np.ndarray, seed: int = 0) -> tuple[np.ndarray, list[float]]:
    """The first two principal components and their explained-variance ratios."""
    from sklearn.decomposition import PCA

    components = min(2, standardized.shape[1], standardized.shape[0])
    pca = PCA(n_components=components, random_state=seed)
    projection = pca.fit_transform(standardized)
    ratios = [float(r) for r in pca.explained_variance_ratio_]
    if components < 2:  # ED=1: nothing to project, the second axis is zero
        projection = np.hstack([projection, np.zeros_like(projection)])
        ratios.append(0.0)
    return projection.astype(np.float32), ratios


def tsne_projection(standardized: np.ndarray, seed: int = 0) -> np.ndarray:
    """A seeded 2-D t-SNE of the standardized codes (slow: about a minute for 10,000 codes)."""
    from sklearn.manifold import TSNE

    n = standardized.shape[0]
    if n < 5:
        raise AetoolError(f"t-SNE needs at least 5 images, got {n}.")
    perplexity = min(30.0, (n - 1) / 3)
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    return tsne.fit_transform(standardized).astype(np.float32)


def check_methods(methods: list[str] | tuple[str, ...]) -> list[str]:
    """The methods in order, without repeats; an unknown one is an error."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise AetoolError(
            f"Unknown projection method {unknown[0]!r}; choose from: {', '.join(METHODS)}."
        )
    if not methods:
        raise AetoolError(f"Name at least one projection method ({', '.join(METHODS)}).")
    return list(dict.fromkeys(methods))


# --------------------------------------------------------------------------- the embedding


def embed_model(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor | np.ndarray | None,
    methods: list[str] | tuple[str, ...] = ("pca",),
    classes: tuple[str, ...] | None = None,
    *,
    seed: int = 0,
    batch_size: int = 2000,
    silhouette_sample: int = SILHOUETTE_SAMPLE,
    neighbors: int = KNN_NEIGHBORS,
    folds: int = KNN_FOLDS,
    source: str = "The model",
) -> Embedding:
    """Encode uint8 `images` with a bare `model` (an `Autoencoder` or anything with `.encode`),
    project the codes and score how well `labels` separate (no scores when `labels` is None:
    a data set without labels). Saves nothing. `source` names the model in messages (codes
    that are not finite numbers are refused)."""
    methods = check_methods(methods)
    if labels is not None:
        labels = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
        labels = labels.astype(np.int64)
        if labels.shape[0] != images.shape[0]:
            raise AetoolError(f"{images.shape[0]} images but {labels.shape[0]} labels.")
        _check_labels(labels)
    codes = encode_images(model, images, batch_size)
    if not np.isfinite(codes).all():
        raise AetoolError(f"{source} gives codes that are not finite numbers (NaN or "
                          "infinite): its weights are damaged or its training diverged.")
    from sklearn.preprocessing import StandardScaler

    try:
        standardized = StandardScaler().fit_transform(codes)
        pca, ratios = pca_projection(standardized, seed)
        projections: dict[str, np.ndarray] = {}
        for method in methods:
            projections[method] = pca if method == "pca" else tsne_projection(standardized,
                                                                              seed)
        scores = _scores(codes, standardized, projections, labels, silhouette_sample,
                         neighbors, folds, seed)
    except (ValueError, FloatingPointError) as exc:  # codes too large to project or score
        raise AetoolError(f"{source} gives codes that cannot be projected or scored "
                          f"({first_line(exc)}).") from None
    if labels is not None and classes is None:
        classes = tuple(str(c) for c in range(int(labels.max()) + 1))
    return Embedding(
        encoding_dim=int(codes.shape[1]),
        codes=codes,
        labels=labels,
        classes=tuple(classes) if classes is not None else None,
        projections=projections,
        explained_variance=ratios,
        **scores,
        settings={
            "knn_neighbors": neighbors,
            "knn_folds": folds,
            "silhouette_sample": min(silhouette_sample or codes.shape[0], int(codes.shape[0])),
            "seed": seed,
        },
    )


def _scores(codes: np.ndarray, standardized: np.ndarray, projections: dict[str, np.ndarray],
            labels: np.ndarray | None, sample: int, neighbors: int, folds: int,
            seed: int) -> dict[str, Any]:
    """Silhouette and k-NN accuracy of the codes and of each projection (None: no labels)."""
    if labels is None:
        return {"silhouette": None, "knn_accuracy": None, "projection_scores": {}}
    return {
        "silhouette": silhouette(standardized, labels, sample, seed),
        "knn_accuracy": knn_accuracy(codes, labels, neighbors, folds, seed),
        "projection_scores": {
            method: {"silhouette": silhouette(points, labels, sample, seed),
                     "knn_accuracy": knn_accuracy(points, labels, neighbors, folds, seed)}
            for method, points in projections.items()
        },
    }


def scatter_png(
    projection: np.ndarray,
    labels: np.ndarray | None,
    classes: tuple[str, ...] | None,
    title: str,
    axis_label: str = "component",
    seed: int = 0,
    dpi: int = PLOT_DPI,
) -> bytes:
    """A scatter plot coloured by class with a legend, as PNG bytes. Draws on matplotlib's
    Agg canvas through the object API (no pyplot), so no global figure state is created."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    fig = Figure(figsize=(6.6, 5.0), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if labels is None:  # a data set without labels: one colour, no legend
        ax.scatter(projection[:, 0], projection[:, 1], color="tab:blue", s=4, alpha=0.5,
                   linewidths=0, rasterized=True)
    else:
        present = np.unique(labels)
        cmap = colormaps["tab10" if present.max(initial=0) < 10 else "tab20"]
        order = np.random.default_rng(seed).permutation(labels.size)  # no class hides another
        ax.scatter(projection[order, 0], projection[order, 1], c=cmap(labels[order] % cmap.N),
                   s=4, alpha=0.6, linewidths=0, rasterized=True)
        classes = classes or ()
        digits = classes == tuple(str(d) for d in range(10))
        handles = [
            Line2D([], [], marker="o", linestyle="", color=cmap(c % cmap.N), markersize=6,
                   label=classes[c] if c < len(classes) else str(c))
            for c in present
        ]
        ax.legend(handles=handles, title="digit" if digits else "class", loc="center left",
                  bbox_to_anchor=(1.01, 0.5), frameon=False, fontsize=9)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(f"{axis_label} 1")
    ax.set_ylabel(f"{axis_label} 2")
    ax.grid(alpha=0.2)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def plot_title(embedding: Embedding, method: str, name: str) -> str:
    if method == "pca":
        first, second = embedding.explained_variance
        detail = (f"PCA of standardized codes: explained variance "
                  f"{first:.1%} + {second:.1%} = {first + second:.1%}")
    else:
        detail = "t-SNE of standardized codes"
    return f"{name}: latent space (ED={embedding.encoding_dim})\n{detail}"


def save_embedding(embedding: Embedding, folder: Path | str, name: str | None = None,
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write `embedding.npz`, one scatter PNG per method and (last) `embedding.json` into
    `folder`; return what the JSON holds. Every file is written atomically."""
    folder = Path(folder)
    with runs.run_lock(folder):
        return _save_embedding(embedding, folder, name or folder.name, extra)


def _save_embedding(embedding: Embedding, folder: Path, name: str,
                    extra: dict[str, Any] | None) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"codes": embedding.codes,
              "projection": embedding.projections[embedding.methods[0]]}
    if embedding.labels is not None:
        arrays["labels"] = embedding.labels
    arrays.update({f"projection_{m}": p for m, p in embedding.projections.items()})
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    write_atomic(folder / runs.EMBEDDING_NPZ, buffer.getvalue())
    plots = {}
    for method, projection in embedding.projections.items():
        png = scatter_png(projection, embedding.labels, embedding.classes,
                          plot_title(embedding, method, name),
                          "PC" if method == "pca" else "t-SNE", embedding.settings.get("seed", 0))
        write_atomic(folder / plot_name(method), png)
        plots[method] = plot_name(method)
    summary = runs.EmbeddingSummary.from_json({
        "run": name, **embedding.summary(), **(extra or {}),
        "plot": plots[embedding.methods[0]], "plots": plots, "codes": runs.EMBEDDING_NPZ})
    summary.write(folder / runs.EMBEDDING_JSON)
    return summary.to_json()


def load_codes(folder: Path | str) -> dict[str, np.ndarray]:
    """The arrays of a saved `embedding.npz` (codes, labels, projection, ...)."""
    path = Path(folder) / runs.EMBEDDING_NPZ
    if not path.is_file():
        raise AetoolError(f"{path} does not exist; run `aetool embed` first.")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except (OSError, ValueError) as exc:
        raise AetoolError(f"{path} cannot be read ({exc}); run `aetool embed` again.") from None


def embed_run(
    run: runs.Run,
    data: ImageData,
    methods: list[str] | tuple[str, ...] = ("pca",),
    device: torch.device | str = "cpu",
    *,
    seed: int = 0,
    save: bool = True,
    **options: Any,
) -> tuple[Embedding, dict[str, Any]]:
    """Encode `data`'s test set with the run's best weights on `device`, score and (by
    default) save the embedding into the run folder. Returns it and its JSON summary."""
    model = run.model(device)
    options.setdefault("source", f"The model in {run.path / runs.MODEL}")
    embedding = embed_model(model, data.test_images, data.test_labels, methods, data.classes,
                            seed=seed, **options)
    extra = {"dataset": data.name, "dataset_sha256": data.checksum, "device": str(device)}
    if save:
        summary = save_embedding(embedding, run.path, run.name, extra)
    else:
        summary = {"run": run.name, **embedding.summary(), **extra}
    return embedding, summary


__all__ = [
    "Embedding", "METHODS", "embed_model", "embed_run", "embed_runs", "encode_images",
    "knn_accuracy",
    "load_codes", "pca_projection", "save_embedding", "scatter_png", "silhouette",
    "tsne_projection",
]


def embed_runs(
    found: Sequence[runs.Run],
    methods: Sequence[str] = ("pca",),
    device: torch.device | str = "cpu",
    *,
    data_dir: Path | str | None = None,
    dataset: str | None = None,
    seed: int = 0,
    on_progress: ProgressFn | None = None,
    data_progress: ProgressFn | None = None,
    skipped: list[runs.Unreadable] | None = None,
) -> list[dict[str, Any]]:
    """Embed and save every run with the data set it was trained on (unless `dataset`), each
    set loaded once; returns the summaries, each with the run folder's `path`. A run that
    cannot be embedded (damaged weights, a model or data set not available here, changed
    data) is an error, unless `skipped` is a list: then it is appended there, and the others
    are embedded. `on_progress` hears of each run as it starts, and of the end (task
    "embed", counting the runs of `found`)."""
    from aetool.evaluate.corrupt import skip

    methods = check_methods(list(methods))
    loaded: dict[tuple[str, bool], ImageData | AetoolError] = {}
    ready = []
    for i, run in enumerate(found):  # every data set loaded and checked before any is written
        try:
            ready.append((i, run, _run_data(run, loaded, dataset, data_dir, device,
                                            data_progress)))
        except AetoolError as exc:
            skip(run.name, exc, skipped)
    summaries = []
    report = on_progress or (lambda event: None)
    for i, run, data in ready:
        report(ProgressEvent("embed", i, len(found), unit="runs", name=run.name))
        try:
            _, summary = embed_run(run, data, methods, device, seed=seed)
        except AetoolError as exc:
            skip(run.name, exc, skipped)
            continue
        summaries.append({**summary, "path": str(run.path)})
    report(ProgressEvent("embed", len(found), len(found), "done", "runs"))
    return summaries


def _run_data(run: runs.Run, loaded: dict[tuple[str, bool], ImageData | AetoolError],
              dataset: str | None, data_dir: Path | str | None, device: torch.device | str,
              data_progress: ProgressFn | None) -> ImageData:
    """The test set a run is embedded with: `dataset`, else the one it was trained on,
    checked to be unchanged. Each set is loaded once (a failure is remembered too)."""
    key = (dataset, False) if dataset else run.dataset()
    if key not in loaded:
        try:
            loaded[key] = load_dataset(key[0], data_dir, device, data_progress,
                                       resize=key[1]).subset(train=0)
        except AetoolError as exc:
            loaded[key] = exc
    data = loaded[key]
    if isinstance(data, AetoolError):
        raise data
    if not dataset:
        check_unchanged(data.name, data.checksum, run.metrics.get("dataset_sha256"),
                        f"run {run.name!r}")
    return data


# --------------------------------------------------------------------------- reading summaries


def read_summary(path: Path | str) -> dict[str, Any]:
    """A saved `embedding.json`, checked (`aetool.workspace.EmbeddingSummary`): a damaged one
    is a `RunError` naming it."""
    return runs.EmbeddingSummary.read(path).to_json()


def __getattr__(name: str) -> Any:
    """The file names this module had (deprecated: they are the workspace's)."""
    return runs.old_file_name(__name__, name, ("EMBEDDING_NPZ", "EMBEDDING_JSON"))
