"""Out-of-distribution scores of `POST /logprob` with `ood: true`: a served model's reference statistics
(read once at load, never computed here: `model/ood.py` makes them) and a request's results from its
log-probabilities and its images' compressed lengths (docs/math.md §8)."""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from fastapi.exceptions import RequestValidationError

from model.complexity import codec_version, compressed_bits
from model.ood import (
    DEFAULT_FPR,
    FPRS,
    SCORED_SAMPLES,
    OodStats,
    OodStatsError,
    complexity_score,
    read_ood_stats,
)

from .errors import OodUnavailable
from .schemas import ImageScore, OodImageScore, OodReferenceInfo, OodRequestInfo, Typicality

__all__ = ["OodReference", "check_ood_options", "complexity_bits", "ood_results"]

log = logging.getLogger("service.ood")


@dataclass(frozen=True)
class OodReference:
    """A served model's statistics, or why it has none (`problem` names the command that makes them)."""

    stats: OodStats | None = None
    problem: str = "no out-of-distribution statistics were loaded: run `flowserve ood CHECKPOINT`"

    @classmethod
    def load(cls, checkpoint: Path) -> OodReference:
        """The checkpoint's `ood_stats.json`, checked against its weights; a missing, stale or unreadable
        file is logged and makes `ood: true` a 422 for this model, never a failed start."""
        try:
            stats = read_ood_stats(checkpoint)
        except OodStatsError as exc:
            log.warning("%s", exc)
            return cls(None, str(exc))
        if stats.codec != codec_version():
            log.warning(
                "%s: complexity statistics measured with %s, this server has %s: ood_score may shift by a "
                "few bits (rerun flowserve ood %s here to match)",
                checkpoint.name,
                stats.codec,
                codec_version(),
                checkpoint,
            )
        return cls(stats)

    def require(self) -> OodStats:
        """The statistics, or `OodUnavailable` saying why not and how to make them (the message names the
        checkpoint)."""
        if self.stats is None:
            raise OodUnavailable(self.problem)
        return self.stats

    def info(self) -> OodReferenceInfo:
        """What `GET /models` says about them."""
        stats = self.stats
        common = {"fprs": list(FPRS), "default_fpr": DEFAULT_FPR}
        if stats is None:
            return OodReferenceInfo(
                available=False,
                message=self.problem,
                method=None,
                dataset=None,
                test_images=None,
                entropy=None,
                thresholds={},
                typicality_batch_sizes=[],
                **common,
            )
        return OodReferenceInfo(
            available=True,
            message=None,
            method=stats.method,
            dataset=stats.dataset,
            test_images=stats.test_images,
            entropy=stats.entropy,
            thresholds={f"{f:g}": t for f, t in sorted(stats.score_thresholds.items())},
            typicality_batch_sizes=sorted(stats.typicality_thresholds),
            **common,
        )


def _invalid(field: str, message: str) -> RequestValidationError:
    return RequestValidationError([{"loc": ("body", field), "msg": message, "type": "value_error"}])


def check_ood_options(ood: bool, fpr: float | None, samples: int) -> None:
    """`ood_fpr` only with `ood: true`, and `ood` only at the K the statistics were computed with."""
    if fpr is not None and not ood:
        raise _invalid("ood_fpr", "is only used with ood: true")
    if ood and samples != SCORED_SAMPLES:
        raise _invalid(
            "dequantization_samples",
            f"must be {SCORED_SAMPLES} with ood: true (the reference statistics are at K = {SCORED_SAMPLES}),"
            f" got {samples}",
        )


async def complexity_bits(images: torch.Tensor) -> np.ndarray:
    """`L(x)` of a request's images, on a worker thread: ~0.1 ms of CPU per 28×28 image, too much for the
    event loop at a few hundred images."""
    return await asyncio.to_thread(compressed_bits, images)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def ood_results(
    stats: OodStats, scores: list[ImageScore], log_probs: np.ndarray, bits: np.ndarray, fpr: float | None
) -> tuple[list[OodImageScore], OodRequestInfo, Typicality | None]:
    """Per image and per request, what `ood: true` adds to the scores of `log_probs` (nats, one per image)
    and `bits` (`L(x)`), at false-positive rate `fpr` (default `DEFAULT_FPR`)."""
    fpr = DEFAULT_FPR if fpr is None else fpr
    s = complexity_score(log_probs, bits)
    outlier = stats.is_outlier(s, fpr)
    percentile = stats.percentile(log_probs)
    results = [
        OodImageScore(
            **score.model_dump(),
            ood_score=_finite(float(si)),
            log_prob_percentile=float(p),
            is_outlier=bool(o),
            ood_method=stats.method,
        )
        for score, si, p, o in zip(scores, s, percentile, outlier, strict=True)
    ]
    info = OodRequestInfo(
        method=stats.method,
        fpr=fpr,
        threshold=stats.threshold(fpr),
        dataset=stats.dataset,
        test_images=stats.test_images,
    )
    typicality = None
    if len(log_probs) > 1:
        verdict = stats.typicality(log_probs, fpr)
        typicality = Typicality(
            batch_size=verdict.batch_size,
            reference_batch_size=verdict.reference_batch_size,
            mean_neg_log_prob=_finite(verdict.mean_neg_log_prob),
            entropy=verdict.entropy,
            statistic=_finite(verdict.statistic),
            threshold=verdict.threshold,
            is_outlier=verdict.is_outlier,
        )
    return results, info, typicality
