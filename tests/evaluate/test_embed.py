"""`aetool embed`: codes, 2-D projections, scatter plots and separation scores."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from aetool import workspace as runs
from aetool.cli import app
from aetool.data import DATASETS
from aetool.errors import AetoolError
from aetool.evaluate.embed import (
    check_methods,
    embed_model,
    embed_run,
    encode_images,
    knn_accuracy,
    load_codes,
    scatter_png,
    silhouette,
)
from aetool.models import Autoencoder, load_model
from aetool.train.loop import preset_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished ED=4 run folder (seeded random weights: embedding never trains)."""
    from dataclasses import asdict

    root = tmp_path_factory.mktemp("embed") / "runs"
    torch.manual_seed(0)
    runs.save_json(root / "ed4" / runs.CONFIG, asdict(preset_config("report", ed=4)))
    runs.save_torch(root / "ed4" / runs.MODEL, Autoencoder(4).state_dict())
    runs.save_json(root / "ed4" / runs.METRICS, {"test_mse": 0.05, "epochs": 1})
    return root


@pytest.fixture()
def run(trained, tmp_path):
    import shutil

    shutil.copytree(trained, tmp_path / "runs")
    return runs.open_run(tmp_path / "runs" / "ed4")


def png_size(data: bytes) -> tuple[int, int]:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        return image.size


# --------------------------------------------------------------------------- scores


def blobs(separated: bool, n: int = 300, dims: int = 4):
    rng = np.random.default_rng(0)
    labels = np.arange(n) % 3
    centres = np.eye(3, dims) * (10.0 if separated else 0.0)
    return centres[labels] + rng.normal(size=(n, dims)), labels


def test_scores_tell_separated_from_mixed_classes():
    points, labels = blobs(separated=True)
    assert silhouette(points, labels) > 0.7
    assert knn_accuracy(points, labels) == pytest.approx(1.0)
    points, labels = blobs(separated=False)
    assert abs(silhouette(points, labels)) < 0.1
    assert knn_accuracy(points, labels) < 0.6


def test_silhouette_samples_large_sets_reproducibly():
    from sklearn.metrics import silhouette_score

    points, labels = blobs(separated=True, n=3000)
    full = silhouette_score(points, labels)
    first = silhouette(points, labels, sample=500, seed=1)
    assert first == silhouette(points, labels, sample=500, seed=1)  # the seed fixes the sample
    second = silhouette(points, labels, sample=500, seed=2)
    # A sample really is drawn, and the seed chooses it: other seeds, other estimates ...
    assert first != second and first != full and second != full
    # ... of the same score: a 500-point sample estimates the mean of 3000 closely.
    assert first == pytest.approx(full, abs=0.02) and second == pytest.approx(full, abs=0.02)
    # A set no larger than the sample is scored whole.
    assert silhouette(points, labels, sample=3000, seed=1) == pytest.approx(full, abs=1e-12)


def test_scores_need_two_classes():
    with pytest.raises(AetoolError, match="at least two classes"):
        silhouette(np.zeros((5, 2)), np.zeros(5, dtype=np.int64))


def test_unknown_method_is_an_error():
    assert check_methods(["pca", "tsne", "pca"]) == ["pca", "tsne"]
    with pytest.raises(AetoolError, match="Unknown projection method 'umap'"):
        check_methods(["umap"])


# --------------------------------------------------------------------------- the library


def test_embed_a_bare_model(fake_data):
    torch.manual_seed(0)
    model = Autoencoder(4)
    images, labels = fake_data.test_images, fake_data.test_labels
    embedding = embed_model(model, images, labels, classes=fake_data.classes)
    assert embedding.codes.shape == (200, 4) and embedding.codes.dtype == np.float32
    assert embedding.projections["pca"].shape == (200, 2)
    assert np.array_equal(embedding.labels, labels.numpy())
    first, second = embedding.explained_variance
    assert 0 < second <= first and first + second <= 1 + 1e-6
    assert -1 <= embedding.silhouette <= 1
    assert 0 <= embedding.knn_accuracy <= 1
    assert set(embedding.projection_scores["pca"]) == {"silhouette", "knn_accuracy"}
    # batching does not change the codes
    assert np.allclose(encode_images(model, images, batch_size=7), embedding.codes, atol=1e-6)


def test_embed_run_saves_codes_plot_and_scores(run, fake_data):
    data = fake_data.subset(test=60)  # t-SNE is slow; 60 images keep it to about a second
    embedding, summary = embed_run(run, data, ["pca", "tsne"], "cpu")
    arrays = load_codes(run.path)
    assert arrays["codes"].shape == (60, 4)
    assert np.array_equal(arrays["labels"], data.test_labels.numpy())
    assert np.array_equal(arrays["projection"], arrays["projection_pca"])
    assert arrays["projection_tsne"].shape == (60, 2)
    saved = json.loads((run.path / "embedding.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    assert saved["method"] == "pca" and saved["plot"] == "latent_pca.png"
    assert saved["plots"] == {"pca": "latent_pca.png", "tsne": "latent_tsne.png"}
    assert len(saved["explained_variance"]) == 2
    for key in ("silhouette", "knn_accuracy"):
        assert isinstance(saved[key], float)
    assert saved["dataset"] == "mnist" and saved["dataset_sha256"] == fake_data.checksum
    for name in saved["plots"].values():
        width, height = png_size((run.path / name).read_bytes())
        assert 400 < width < 1000 and 300 < height < 800
    assert not list(run.path.glob(".*.tmp*"))  # atomic writes left nothing behind


def test_scatter_plot_names_fashion_classes_without_pyplot():
    import sys

    classes = DATASETS["fashion-mnist"].classes
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 100)
    before = "matplotlib.pyplot" in sys.modules
    png = scatter_png(rng.normal(size=(100, 2)), labels, classes, "T-shirt/top & co")
    assert png_size(png)[0] > 300
    assert ("matplotlib.pyplot" in sys.modules) == before


def test_the_seed_checkpoints_separate_digits(real_mnist, seed_checkpoints):
    """The report's claim: the 2-D PCA picture of ED=4 separates digits better than ED=32's."""
    data = real_mnist.subset(test=2000)
    scores = {}
    for name in ("net_params_4.pth", "net_params_32_2000.pth"):
        model = load_model(seed_checkpoints / name)
        scores[name] = embed_model(model, data.test_images, data.test_labels,
                                   silhouette_sample=1000)
    four, thirty_two = scores["net_params_4.pth"], scores["net_params_32_2000.pth"]
    assert four.projection_scores["pca"]["knn_accuracy"] > \
        thirty_two.projection_scores["pca"]["knn_accuracy"]
    assert four.knn_accuracy > 0.8 and thirty_two.knn_accuracy > 0.8


# --------------------------------------------------------------------------- command line


def test_cli_embeds_every_run_as_json(run, fake_data_dir):
    result = CliRunner().invoke(app, ["embed", "--runs", str(run.path.parent), "--data-dir",
                                      str(fake_data_dir), "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    summaries = json.loads(result.stdout)
    assert [s["run"] for s in summaries] == ["ed4"]
    assert summaries[0]["ed"] == 4 and 0 <= summaries[0]["knn_accuracy"] <= 1
    assert (run.path / "latent_pca.png").is_file()


def test_cli_table_and_selection(run, fake_data_dir):
    result = CliRunner().invoke(app, ["embed", "--runs", str(run.path.parent), "--ed", "4",
                                      "--data-dir", str(fake_data_dir), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "silhouette" in result.output and "ed4" in result.output


def test_cli_errors(run, fake_data_dir, tmp_path):
    runner = CliRunner()
    bad = runner.invoke(app, ["embed", "--runs", str(run.path.parent), "--method", "umap"])
    assert bad.exit_code == 2 and "umap" in bad.output
    empty = runner.invoke(app, ["embed", "--runs", str(tmp_path / "none")])
    assert empty.exit_code == 1 and "No finished runs" in empty.output
    assert "Traceback" not in empty.output
    no_ed = runner.invoke(app, ["embed", "--runs", str(run.path.parent), "--ed", "8"])
    assert no_ed.exit_code == 1 and "encoding dimension 8" in no_ed.output
