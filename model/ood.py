"""Out-of-distribution reference statistics of a checkpoint, and the tests they calibrate.

`python -m model.ood CHECKPOINT` (also `flowserve ood`) scores the checkpoint's held-out test set the way
the service scores (hashed single-sample dequantisation, K = 1) and writes `CHECKPOINT/ood_stats.json`:
quantiles of the test log-probabilities (for percentiles), the input-complexity score
`S(x) = −log₂ p(x) − L(x)` with its thresholds at the false-positive rates `FPRS`, and the entropy
estimate with bootstrap thresholds of the typicality test at the batch sizes `BATCH_SIZES`
(docs/math.md §8). The file is the only output of this command, and the only way it is made.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import load_flow, read_config, weights_digest
from .complexity import CODECS, COMPRESSOR, codec_version, compressed_bits
from .scoring import LogDensity, log_prob, torch_log_density

__all__ = [
    "BATCH_SIZES",
    "DEFAULT_FPR",
    "FPRS",
    "SCORED_SAMPLES",
    "STATS_FILE",
    "OodStats",
    "OodStatsError",
    "TypicalityVerdict",
    "complexity_score",
    "compute_ood_stats",
    "fit_ood_stats",
    "main",
    "read_ood_stats",
    "stats_command",
    "weights_digest",
    "write_ood_stats",
]

STATS_FILE = "ood_stats.json"
FORMAT_VERSION = 1
FPRS: tuple[float, ...] = (0.01, 0.05, 0.1)  # the false-positive rates every file has thresholds for
DEFAULT_FPR = 0.05
BATCH_SIZES: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)  # typicality thresholds are fit for these
QUANTILE_LEVELS = 1001  # stored quantiles at 0.0%, 0.1%, ..., 100.0%
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
SCORED_SAMPLES = 1  # K of the importance-weighted bound the statistics are computed with
METHOD = f"input_complexity:{COMPRESSOR}"


class OodStatsError(ValueError):
    """A checkpoint's statistics are missing, were computed for other weights, or cannot be read; the
    message names the command that (re)makes them."""


def stats_command(checkpoint: Path) -> str:
    """The command that writes `checkpoint`'s statistics."""
    return f"flowserve ood {checkpoint.as_posix()}"


def complexity_score(log_prob_nats: np.ndarray, complexity_bits: np.ndarray) -> np.ndarray:
    """`S(x) = −log₂ p(x) − L(x)` in bits: higher is more anomalous (+inf where `log p` is −inf)."""
    return -np.asarray(log_prob_nats, dtype=np.float64) / math.log(2) - np.asarray(complexity_bits)


@dataclass(frozen=True)
class TypicalityVerdict:
    """The typicality test of one batch: `statistic = |mean(−log p) − entropy|` (nats) against the
    bootstrap `threshold` fit for `reference_batch_size` (the largest stored size ≤ `batch_size`)."""

    batch_size: int
    reference_batch_size: int
    mean_neg_log_prob: float
    entropy: float
    statistic: float
    threshold: float
    fpr: float
    is_outlier: bool


def _key(fpr: float) -> str:
    return f"{fpr:g}"


@dataclass(frozen=True)
class OodStats:
    """A checkpoint's reference statistics (see the module docstring); log-probabilities and the entropy
    in nats, complexity scores `S` in bits. Quantiles are at `QUANTILE_LEVELS` evenly spaced levels."""

    dataset: str
    test_images: int
    num_dims: int
    weights_sha256: str
    codec: str
    log_prob_quantiles: np.ndarray
    score_quantiles: np.ndarray
    score_thresholds: dict[float, float]
    entropy: float
    neg_log_prob_std: float
    typicality_thresholds: dict[int, dict[float, float]]
    created: str
    method: str = METHOD

    # -- the tests -------------------------------------------------------------------------------------
    def percentile(self, log_probs: np.ndarray) -> np.ndarray:
        """Per image, the percentage (0–100) of the model's test images with a lower log-probability,
        interpolated between the stored quantiles; monotone in the log-probability."""
        levels = np.linspace(0.0, 100.0, len(self.log_prob_quantiles))
        values = np.asarray(log_probs, dtype=np.float64)
        return np.interp(np.nan_to_num(values, nan=-np.inf), self.log_prob_quantiles, levels, 0.0, 100.0)

    def threshold(self, fpr: float) -> float:
        """The complexity-score threshold (bits) that `fpr` of the test images exceed."""
        if fpr not in self.score_thresholds:
            stored = sorted(self.score_thresholds)
            raise ValueError(f"no threshold at false-positive rate {fpr}; stored: {stored}")
        return self.score_thresholds[fpr]

    def is_outlier(self, scores: np.ndarray, fpr: float = DEFAULT_FPR) -> np.ndarray:
        """Per image, whether `S(x)` is above the threshold at `fpr` (an infinite score always is)."""
        return np.asarray(scores, dtype=np.float64) > self.threshold(fpr)

    def reference_batch_size(self, batch_size: int) -> int:
        """The stored batch size whose typicality threshold serves `batch_size`: the largest not above it.
        Thresholds shrink as batches grow, so a smaller batch's threshold keeps the false-positive rate
        at most the nominal one (conservative between the stored sizes and above the largest)."""
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        return max(m for m in self.typicality_thresholds if m <= batch_size)

    def typicality(self, log_probs: np.ndarray, fpr: float = DEFAULT_FPR) -> TypicalityVerdict:
        """Two-sided typicality test of one batch: its mean `−log p` too far from the entropy estimate,
        too low (too likely) as well as too high (Nalisnick et al. 2019)."""
        values = np.asarray(log_probs, dtype=np.float64)
        reference = self.reference_batch_size(len(values))
        threshold = self.typicality_thresholds[reference][fpr]
        mean = float(-values.mean())
        statistic = abs(mean - self.entropy) if not math.isnan(mean) else math.inf
        return TypicalityVerdict(
            len(values), reference, mean, self.entropy, statistic, threshold, fpr, statistic > threshold
        )

    # -- the file --------------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "method": self.method,
            "dataset": self.dataset,
            "split": "test",
            "test_images": self.test_images,
            "num_dims": self.num_dims,
            "dequantization_samples": SCORED_SAMPLES,
            "weights_sha256": self.weights_sha256,
            "compressor": {"name": COMPRESSOR, "options": CODECS[COMPRESSOR], "codec": self.codec},
            "created": self.created,
            "log_prob": {
                "unit": "nats",
                "mean": round(float(-self.entropy), 4),
                "quantiles": [round(float(v), 4) for v in self.log_prob_quantiles],
            },
            "complexity_score": {
                "unit": "bits",
                "quantiles": [round(float(v), 3) for v in self.score_quantiles],
                "thresholds": {_key(f): round(t, 4) for f, t in sorted(self.score_thresholds.items())},
            },
            "typicality": {
                "unit": "nats",
                "entropy": round(self.entropy, 4),
                "neg_log_prob_std": round(self.neg_log_prob_std, 4),
                "bootstrap_resamples": BOOTSTRAP_RESAMPLES,
                "bootstrap_seed": BOOTSTRAP_SEED,
                "thresholds": {
                    str(m): {_key(f): round(t, 4) for f, t in sorted(by_fpr.items())}
                    for m, by_fpr in sorted(self.typicality_thresholds.items())
                },
            },
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OodStats:
        """Parse and check a file's contents; `ValueError` (or `KeyError`, `TypeError`) if malformed."""
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"format_version {data.get('format_version')!r}, expected {FORMAT_VERSION}")
        if data.get("method") != METHOD:
            raise ValueError(f"method {data.get('method')!r}, this version computes {METHOD!r}")
        if data.get("dequantization_samples") != SCORED_SAMPLES:
            raise ValueError(f"dequantization_samples {data.get('dequantization_samples')!r}, expected 1")
        log_probs = np.asarray(data["log_prob"]["quantiles"], dtype=np.float64)
        scores = np.asarray(data["complexity_score"]["quantiles"], dtype=np.float64)
        for name, q in (("log_prob", log_probs), ("complexity_score", scores)):
            if len(q) < 2 or not np.all(np.isfinite(q)) or np.any(np.diff(q) < 0):
                raise ValueError(f"{name}.quantiles must be at least 2 finite, non-decreasing numbers")
        thresholds = {float(k): float(v) for k, v in data["complexity_score"]["thresholds"].items()}
        typical = data["typicality"]
        by_size = {
            int(m): {float(k): float(v) for k, v in by_fpr.items()}
            for m, by_fpr in typical["thresholds"].items()
        }
        if set(thresholds) != set(FPRS) or any(set(v) != set(FPRS) for v in by_size.values()):
            raise ValueError(f"thresholds must be at the false-positive rates {list(FPRS)}")
        if 1 not in by_size:
            raise ValueError("typicality thresholds must include batch size 1")
        return cls(
            dataset=str(data["dataset"]),
            test_images=int(data["test_images"]),
            num_dims=int(data["num_dims"]),
            weights_sha256=str(data["weights_sha256"]),
            codec=str(data["compressor"]["codec"]),
            log_prob_quantiles=log_probs,
            score_quantiles=scores,
            score_thresholds=thresholds,
            entropy=float(typical["entropy"]),
            neg_log_prob_std=float(typical["neg_log_prob_std"]),
            typicality_thresholds=by_size,
            created=str(data["created"]),
        )


def fit_ood_stats(
    log_probs: np.ndarray,
    complexity_bits: np.ndarray,
    *,
    dataset: str,
    num_dims: int,
    weights_sha256: str,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> OodStats:
    """The statistics of held-out in-distribution images from their log-probabilities (nats) and `L(x)`
    (bits). Typicality thresholds: the `1 − α` quantile of `|mean(−log p) − entropy|` over `resamples`
    batches drawn with replacement, per batch size; deterministic for a given `seed`."""
    log_probs = np.asarray(log_probs, dtype=np.float64)
    if log_probs.ndim != 1 or log_probs.shape != np.shape(complexity_bits) or len(log_probs) < 2:
        raise ValueError("need one log-probability and one compressed length per image, at least 2 images")
    if not np.all(np.isfinite(log_probs)):
        bad = int((~np.isfinite(log_probs)).sum())
        raise ValueError(f"{bad} held-out images have a non-finite log-probability: the model is not usable")
    scores = complexity_score(log_probs, complexity_bits)
    levels = np.linspace(0.0, 1.0, QUANTILE_LEVELS)
    neg = -log_probs
    entropy = float(neg.mean())
    rng = np.random.default_rng(seed)
    typicality: dict[int, dict[float, float]] = {}
    for m in BATCH_SIZES:
        means = neg[rng.integers(0, len(neg), size=(resamples, m))].mean(axis=1)
        deviations = np.abs(means - entropy)
        typicality[m] = {f: float(np.quantile(deviations, 1 - f)) for f in FPRS}
    return OodStats(
        dataset=dataset,
        test_images=len(log_probs),
        num_dims=num_dims,
        weights_sha256=weights_sha256,
        codec=codec_version(),
        log_prob_quantiles=np.quantile(log_probs, levels),
        score_quantiles=np.quantile(scores, levels),
        score_thresholds={f: float(np.quantile(scores, 1 - f)) for f in FPRS},
        entropy=entropy,
        neg_log_prob_std=float(neg.std(ddof=1)),
        typicality_thresholds=typicality,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def write_ood_stats(checkpoint: Path, stats: OodStats) -> Path:
    """Write `checkpoint/ood_stats.json` (atomically: a server reading it never sees half a file)."""
    path = Path(checkpoint) / STATS_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(stats.to_json(), indent=1) + "\n")
    tmp.replace(path)
    return path


def read_ood_stats(checkpoint: Path) -> OodStats:
    """The checkpoint's statistics, checked against its weights; `OodStatsError` naming the command that
    makes them when they are missing, stale or unreadable."""
    checkpoint = Path(checkpoint)
    path = checkpoint / STATS_FILE
    fix = f"run `{stats_command(checkpoint)}`"
    if not path.is_file():
        raise OodStatsError(f"{checkpoint.name} has no out-of-distribution statistics ({STATS_FILE}): {fix}")
    try:
        stats = OodStats.from_json(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise OodStatsError(f"{path} cannot be used ({exc}): {fix}") from None
    if stats.weights_sha256 != weights_digest(checkpoint):
        raise OodStatsError(f"{path} was computed for other weights than {checkpoint.name}'s: {fix}")
    return stats


@torch.inference_mode()
def _log_probs(density: LogDensity, images: torch.Tensor, batch_size: int, label: str) -> np.ndarray:
    from tqdm import tqdm

    out = []
    for start in tqdm(range(0, len(images), batch_size), desc=label, unit="batch", mininterval=5):
        out.append(log_prob(density, images[start : start + batch_size], SCORED_SAMPLES).numpy())
    return np.concatenate(out)


def compute_ood_stats(
    checkpoint: Path,
    device: str | torch.device = "cpu",
    batch_size: int = 250,
    dataset: str | None = None,
    test_images: int = 0,
) -> OodStats:
    """Score `checkpoint`'s test set (its training dataset's, or `dataset`'s; the first `test_images`, 0:
    all) with the flow on `device`, and fit the statistics."""
    import kernels_cuda

    from .data import load_dataset

    checkpoint = Path(checkpoint)
    kernels_cuda.prepare(device)  # the native solve where there is one, as the service serves
    flow = load_flow(checkpoint, device=device).freeze()
    name = dataset or read_config(checkpoint)["training"].get("dataset", "mnist")
    try:
        images = load_dataset(name).test
    except ValueError as exc:
        raise OodStatsError(f"{exc}; pass --dataset with the folder or .npy file it was trained on") from None
    if test_images:
        images = images[:test_images]
    log_probs = _log_probs(torch_log_density(flow), images, batch_size, f"{checkpoint.name} on {name}")
    return fit_ood_stats(
        log_probs,
        compressed_bits(images),
        dataset=name,
        num_dims=flow.num_dims,
        weights_sha256=weights_digest(checkpoint),
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m model.ood", description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="+", help="checkpoint folders; each gets its own ood_stats.json")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--dataset", default=None, help="held-out images (default: the checkpoint's dataset)")
    p.add_argument("--test-images", type=int, default=0, help="only the first N test images (0: all)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    for name in args.checkpoints:
        checkpoint = Path(name)
        try:
            stats = compute_ood_stats(checkpoint, device, args.batch_size, args.dataset, args.test_images)
        except (ValueError, FileNotFoundError) as exc:  # no held-out data, or a broken model
            print(f"{checkpoint}: {exc}", file=sys.stderr)
            return 1
        path = write_ood_stats(checkpoint, stats)
        thresholds = ", ".join(f"{f:g}: {t:.1f}" for f, t in sorted(stats.score_thresholds.items()))
        print(
            f"wrote {path}: {stats.test_images} {stats.dataset} test images, entropy "
            f"{stats.entropy / (stats.num_dims * math.log(2)):.3f} bits/dim, S thresholds (bits) {thresholds}"
        )
    print("the model card shows them: regenerate it with `flowserve card CHECKPOINT`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
