"""Out-of-distribution reference statistics (model/ood.py) and the input complexity (model/complexity.py)."""

from __future__ import annotations

import io
import itertools
import json
import math
import re

import numpy as np
import pytest
import torch
from PIL import Image

from model import save_flow
from model.complexity import CODECS, COMPRESSOR, compressed_bits
from model.ood import (
    BATCH_SIZES,
    DEFAULT_FPR,
    FPRS,
    STATS_FILE,
    OodStats,
    OodStatsError,
    complexity_score,
    fit_ood_stats,
    main,
    read_ood_stats,
    weights_digest,
    write_ood_stats,
)

from .test_flow import tiny_flow

N = 10_000


def synthetic(n: int = N, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Log-probabilities (nats) and compressed lengths (bits) of `n` stand-in images: a skewed −log p, as
    real models give, and lengths correlated with it."""
    rng = np.random.default_rng(seed)
    neg = 700 + 150 * rng.gamma(2.0, 1.0, n)
    bits = 0.8 * neg / math.log(2) + rng.normal(0, 60, n)
    return -neg, bits


def fit(log_probs: np.ndarray, bits: np.ndarray) -> OodStats:
    return fit_ood_stats(log_probs, bits, dataset="synthetic", num_dims=784, weights_sha256="0" * 64)


@pytest.fixture(scope="module")
def stats() -> OodStats:
    return fit(*synthetic())


def test_percentile_is_monotone_and_spans_0_to_100(stats):
    log_probs, _ = synthetic()
    grid = np.linspace(log_probs.min() - 100, log_probs.max() + 100, 5001)
    percentiles = stats.percentile(grid)
    assert np.all(np.diff(percentiles) >= 0)
    assert percentiles[0] == 0 and percentiles[-1] == 100
    assert stats.percentile(np.array([-np.inf, np.nan]))[0] == 0 == stats.percentile(np.array([np.nan]))[0]
    # on the fit data, the percentile of each image is its rank (within the 0.1% quantile spacing)
    ranks = 100 * log_probs.argsort().argsort() / (len(log_probs) - 1)
    assert np.abs(stats.percentile(log_probs) - ranks).max() < 0.2
    assert abs(stats.percentile(np.array([np.median(log_probs)]))[0] - 50) < 0.2


def test_complexity_thresholds_give_their_false_positive_rate(stats):
    log_probs, bits = synthetic()
    fitted = complexity_score(log_probs, bits)
    fresh = complexity_score(*synthetic(seed=1))
    assert set(stats.score_thresholds) == set(FPRS)
    for fpr in FPRS:
        on_fit = stats.is_outlier(fitted, fpr).mean()
        assert abs(on_fit - fpr) <= 2 / N  # a quantile of the data it was fit on
        sigma = math.sqrt(fpr * (1 - fpr) / N)
        assert abs(stats.is_outlier(fresh, fpr).mean() - fpr) < 4 * sigma  # and of fresh draws of it
    assert np.array_equal(stats.is_outlier(fitted), stats.is_outlier(fitted, DEFAULT_FPR))
    assert stats.is_outlier(np.array([np.inf]))[0]
    with pytest.raises(ValueError, match=r"0\.2"):
        stats.threshold(0.2)


@pytest.mark.parametrize("batch_size", [1, 4, 16])
def test_typicality_flags_typical_batches_at_its_false_positive_rate(stats, batch_size):
    log_probs, _ = synthetic(2000 * batch_size, seed=2)  # fresh draws from the fitted distribution
    batches = log_probs.reshape(2000, batch_size)
    for fpr in FPRS:
        rate = np.mean([stats.typicality(b, fpr).is_outlier for b in batches])
        assert abs(rate - fpr) < 4 * math.sqrt(fpr * (1 - fpr) / 2000) + 0.01, (fpr, rate)


def test_typicality_is_two_sided_too_likely_batches_are_flagged(stats):
    log_probs, _ = synthetic()
    likeliest, least = np.sort(log_probs)[::-1][:16], np.sort(log_probs)[:16]
    for batch in (likeliest, least, likeliest[:4]):
        verdict = stats.typicality(batch)
        assert verdict.is_outlier and verdict.statistic > verdict.threshold
    too_likely = stats.typicality(likeliest)
    assert too_likely.mean_neg_log_prob < too_likely.entropy  # flagged for being more likely than data
    assert stats.typicality(np.full(16, -stats.entropy)).statistic == 0  # the entropy itself is typical
    assert stats.typicality(np.array([-np.inf, -800.0])).is_outlier


def test_batch_sizes_between_the_stored_ones_use_the_next_smaller(stats):
    assert [stats.reference_batch_size(n) for n in (1, 3, 16, 17, 255, 256, 5000)] == [
        1,
        2,
        16,
        16,
        128,
        256,
        256,
    ]
    thresholds = [stats.typicality_thresholds[m][DEFAULT_FPR] for m in BATCH_SIZES]
    assert all(a > b for a, b in itertools.pairwise(thresholds))  # wider for fewer images
    log_probs, _ = synthetic()
    verdict = stats.typicality(log_probs[:20])
    assert (verdict.batch_size, verdict.reference_batch_size) == (20, 16)
    assert verdict.threshold == stats.typicality_thresholds[16][DEFAULT_FPR]
    with pytest.raises(ValueError):
        stats.reference_batch_size(0)


def test_the_file_round_trips_is_small_and_refuses_non_finite_data(stats):
    again = OodStats.from_json(json.loads(json.dumps(stats.to_json())))
    grid = np.linspace(-3000, -500, 101)
    assert np.allclose(again.percentile(grid), stats.percentile(grid), atol=1e-3)
    assert again.score_thresholds == pytest.approx(stats.score_thresholds, abs=1e-4)
    assert again.typicality_thresholds.keys() == stats.typicality_thresholds.keys()
    assert len(json.dumps(stats.to_json())) < 64_000
    log_probs, bits = synthetic(100)
    log_probs[3] = -np.inf
    with pytest.raises(ValueError, match="non-finite"):
        fit(log_probs, bits)
    broken = stats.to_json()
    broken["complexity_score"]["thresholds"].pop("0.01")
    with pytest.raises(ValueError, match="false-positive rates"):
        OodStats.from_json(broken)


def test_compressed_bits_is_the_lossless_file_length():
    rng = np.random.default_rng(0)
    images = np.stack(
        [np.zeros((1, 28, 28), np.uint8), rng.integers(0, 256, (1, 28, 28), dtype=np.uint8)], axis=0
    )
    bits = compressed_bits(torch.from_numpy(images))
    assert bits.shape == (2,) and bits[0] < bits[1] / 10  # a blank image is simple, noise is not
    buffer = io.BytesIO()
    Image.fromarray(images[1, 0]).save(buffer, **CODECS[COMPRESSOR])
    assert bits[1] == 8 * buffer.tell()
    buffer.seek(0)
    assert np.array_equal(np.asarray(Image.open(buffer).convert("L")), images[1, 0])  # lossless
    colour = rng.integers(0, 256, (3, 3, 8, 8), dtype=np.uint8)
    for codec in CODECS:  # every candidate of benchmarks/ood_compressors.py codes grey and colour images
        assert compressed_bits(colour, codec).shape == (3,) and compressed_bits(images, codec)[0] > 0
    with pytest.raises(ValueError, match="uint8"):
        compressed_bits(np.zeros((2, 1, 8, 8), np.float32))


def test_the_command_writes_stats_tied_to_the_weights(tmp_path, capsys):
    flow, _ = tiny_flow("glow", dtype=torch.float32)
    checkpoint = tmp_path / "tiny"
    save_flow(flow, checkpoint, {"dataset": "tiny"})
    data = tmp_path / "tiny.npy"
    np.save(data, np.random.default_rng(0).integers(0, 256, (200, 8, 8), dtype=np.uint8))
    with pytest.raises(OodStatsError, match=re.escape(f"flowserve ood {checkpoint}")):
        read_ood_stats(checkpoint)
    assert main([str(checkpoint)]) == 1  # trained on data given by path: the command needs it again
    assert "pass --dataset" in capsys.readouterr().err
    assert main([str(checkpoint), "--dataset", str(data), "--threads", "1", "--batch-size", "7"]) == 0
    assert f"wrote {checkpoint / STATS_FILE}" in capsys.readouterr().out
    stats = read_ood_stats(checkpoint)
    assert (stats.test_images, stats.num_dims) == (20, 64)
    assert stats.weights_sha256 == weights_digest(checkpoint)
    assert sorted(stats.typicality_thresholds) == list(BATCH_SIZES)
    (checkpoint / STATS_FILE).write_text("{not json")
    with pytest.raises(OodStatsError, match="cannot be used"):
        read_ood_stats(checkpoint)
    write_ood_stats(checkpoint, stats)
    with torch.no_grad():
        next(flow.parameters()).add_(0.01)
    save_flow(flow, checkpoint, {"dataset": "tiny"})  # retrained: the statistics are stale
    with pytest.raises(OodStatsError, match=r"other weights.*flowserve ood"):
        read_ood_stats(checkpoint)
