"""The served models: for each model name the version that takes new requests, with one batcher per
operation; versions loaded, swapped and unloaded while the server runs (Triton's repository extension),
and the models folder polled for new ones.

A swap: the new version loads and warms up on the loader thread beside the serving one, which goes on
serving; its batchers start, and it replaces the old one in `entries` in one step on the event loop, so
every request that looks the model up from then on gets it. Requests that already hold the old version
(service/leases.py) finish on it; when the last has been answered, its batchers close (draining first),
its references go and the memory it held is handed back (service/memory.py). A version that fails to load
or warm up stops start-up or is set aside (`--on-bad-model`); on a live load the request fails naming the
reason and the serving version keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

from model import CheckpointError
from model.scoring import Encoding

from .batching import Batcher, InferenceThread
from .errors import ModelLoadFailed, ModelNotLoaded, NotReady, RepositoryConflict, UnknownModel
from .leases import hold
from .memory import release_freed_memory
from .metrics import Metrics
from .model_api import ServedModel
from .operations import OPERATIONS, EncodeInput, LatentsInput, LogProbInput, Scores
from .repository import ModelVersion, fingerprint, scan, scan_model, weights_sha256
from .runtime import Runtime
from .settings import Settings

__all__ = ["ModelRegistry", "ServedEntry", "VersionState", "warmup_sizes"]

log = logging.getLogger("service.registry")
PREFERRED_DEFAULT = "finc-mnist"
LOAD_ERRORS = (CheckpointError, RuntimeError, OSError)  # what a checkpoint that cannot serve raises
RELEASE_GRACE_S = 10.0  # beyond the request deadline, how long a swapped-out version waits for its requests
T = TypeVar("T")


def warmup_sizes(settings: Settings) -> list[int]:
    """The batch sizes every version is warmed up at: one image, and a full batch."""
    return sorted({1, settings.max_batch_images})


@dataclass(eq=False)
class ServedEntry:
    """A served model version and its batchers, one field per operation in `OPERATIONS`, named as the
    operation; `requests` counts the requests holding it (service/leases.py)."""

    model: ServedModel
    sample: Batcher[LatentsInput, torch.Tensor]
    logprob: Batcher[LogProbInput, Scores]
    encode: Batcher[EncodeInput, Encoding]
    requests: int = 0
    _idle: asyncio.Event | None = field(default=None, repr=False)

    @property
    def version(self) -> int:
        return self.model.version

    @property
    def version_label(self) -> str:
        return str(self.model.version)

    def batchers(self) -> list[Batcher]:
        return [getattr(self, operation.name) for operation in OPERATIONS]

    def acquire(self) -> None:
        self.requests += 1

    def release(self) -> None:
        self.requests -= 1
        if self.requests == 0 and self._idle is not None:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Return once no request holds this version."""
        while self.requests:
            self._idle = asyncio.Event()
            await self._idle.wait()


@dataclass(frozen=True)
class VersionState:
    """One version in the repository index: `READY` (takes new requests), `LOADING`, `UNLOADING` (finishing
    the requests it took) or `UNAVAILABLE` (with the reason)."""

    name: str
    version: int
    state: str
    reason: str = ""
    weights_sha256: str | None = None

    def info(self) -> dict[str, str | None]:
        """As `/models` and the repository index show it (versions as strings, as the protocol has them)."""
        return {
            "version": str(self.version),
            "state": self.state,
            "reason": self.reason,
            "weights_sha256": self.weights_sha256,
        }


def _scan_with_hashes(models: Path) -> tuple[dict[str, dict[int, ModelVersion]], dict[Path, str | None]]:
    """Every model's versions and the SHA-256 of each version's weights (file reads: off the loop)."""
    found = scan(models)
    hashes = {v.path: weights_sha256(v.path) for versions in found.values() for v in versions.values()}
    return found, hashes


class ModelRegistry:
    """The served versions by model name (`entries`), the default model, and what the models folder
    holds. `unavailable` names the models that serve no version (skipped at start-up with
    `--on-bad-model skip`, or unloaded), each with the reason; `failures` the versions that failed to load."""

    def __init__(self, settings: Settings, runtime: Runtime, inference: InferenceThread, metrics: Metrics):
        self.settings, self.runtime, self.inference, self.metrics = settings, runtime, inference, metrics
        self.entries: dict[str, ServedEntry] = {}
        self.default = ""
        self.unavailable: dict[str, str] = {}
        self.failures: dict[tuple[str, int], str] = {}
        self.on_disk: dict[str, dict[int, ModelVersion]] = {}
        self.hashes: dict[Path, str | None] = {}
        self.loading: dict[str, int] = {}
        self.retiring: list[ServedEntry] = []
        self._locks: dict[str, asyncio.Lock] = {}
        self._polled: dict[str, tuple] = {}  # per model, the fingerprint of the latest version seen
        self._published: dict[str, str] = {}  # per model, the version label flows_model_ready has
        self._closing = False
        self._loader = ThreadPoolExecutor(1, thread_name_prefix="model-loader")
        self._tasks: set[asyncio.Task] = set()
        self._poller: asyncio.Task | None = None

    # -- start-up (on a worker thread) ------------------------------------------------------------------
    @classmethod
    def load(
        cls, settings: Settings, runtime: Runtime, inference: InferenceThread, metrics: Metrics
    ) -> ModelRegistry:
        """The latest version of every model under `settings.models` on `runtime.device` (onnxruntime with
        `runtime.threads` intra-op threads), each with its batchers from `OPERATIONS`."""
        registry = cls(settings, runtime, inference, metrics)
        registry.on_disk, registry.hashes = _scan_with_hashes(settings.models)
        if not registry.on_disk:
            raise RuntimeError(f"no checkpoints (directories with config.json) under {settings.models}")
        for name, versions in registry.on_disk.items():
            latest = versions[max(versions)]
            registry._polled[name] = fingerprint(latest.path)
            try:
                registry.entries[name] = registry._build(latest, warm=False)
            except LOAD_ERRORS as exc:
                registry._bad_model(latest, exc)
        if not registry.entries:
            raise RuntimeError(
                f"no checkpoint under {settings.models} could be loaded: {registry.unavailable}"
            )
        default = settings.default_model or (
            PREFERRED_DEFAULT if PREFERRED_DEFAULT in registry.entries else sorted(registry.entries)[0]
        )
        if default not in registry.entries:
            raise RuntimeError(f"default model {default!r} is not among {sorted(registry.entries)}")
        registry.default = default
        return registry

    def _bad_model(self, source: ModelVersion, exc: Exception) -> None:
        """A version that cannot serve at start-up: stop with the reason, or record it and go on."""
        if self.settings.on_bad_model == "fail":
            raise RuntimeError(
                f"model {source.name!r} cannot be served: {exc} (--on-bad-model skip serves the others)"
            )
        log.error("model %s (version %d) skipped: %s", source.name, source.version, exc)
        self.unavailable[source.name] = str(exc)
        self.failures[(source.name, source.version)] = str(exc)
        self._publish(source.name, str(source.version), ready=False)

    def _publish(self, name: str, version: str, ready: bool) -> None:
        """`flows_model_ready` for model `name`: one series, for `version`, 1 while it takes requests."""
        previous = self._published.get(name)
        if previous is not None and previous != version:
            self.metrics.model_ready.remove(name, previous)
        self.metrics.model_ready.labels(model=name, version=version).set(1 if ready else 0)
        self._published[name] = version

    def _build(self, source: ModelVersion, warm: bool) -> ServedEntry:
        """Load (and with `warm`, warm up) one version, with its batchers (not started)."""
        settings = self.settings
        model = ServedModel.load(
            source.path,
            self.runtime.device,
            settings.backend,
            self.runtime.threads,
            settings.precision,
            name=source.name,
            version=source.version,
            onnx_cache=settings.onnx_cache if settings.onnx_export else None,
        )
        if warm:
            model.warm_up(warmup_sizes(settings))
        limits = dict(
            max_batch_images=settings.max_batch_images,
            max_wait_s=settings.max_wait_ms / 1000,
            max_queue_images=settings.max_queue_images,
            overload_status=settings.overload_status,
            retry_after_s=settings.retry_after_s,
        )
        batchers = {
            op.name: Batcher(model.name, op(model), self.inference, self.metrics, **limits)
            for op in OPERATIONS
        }
        log.info(
            "loaded %s version %d (%s, %d parameters, weights %s) on %s",
            model.name,
            model.version,
            model.flow.config.arch,
            model.flow.num_parameters(),
            model.weights_sha256[:12],
            self.runtime.device,
        )
        return ServedEntry(model, **batchers)

    def warm_up(self, batch_sizes: list[int]) -> None:
        """Every model's passes at every batch size in use; a model whose outputs are not finite stops
        start-up or is set aside, as `--on-bad-model` says."""
        for name, entry in list(self.entries.items()):
            try:
                entry.model.warm_up(batch_sizes)
            except CheckpointError as exc:
                self._bad_model(self.on_disk[name][entry.version], exc)
                del self.entries[name]
        if self.default not in self.entries:
            raise RuntimeError(f"the default model {self.default!r} failed its warm-up: {self.unavailable}")

    # -- serving (on the event loop) --------------------------------------------------------------------
    def start(self) -> None:
        """Start every batcher, publish readiness, and poll the models folder if the settings say so."""
        for entry in self.entries.values():
            for batcher in entry.batchers():
                batcher.start()
            self._publish(entry.model.name, entry.version_label, ready=True)
        if self.settings.poll_models_s > 0:
            self._poller = asyncio.get_running_loop().create_task(self._poll_forever(), name="model-poller")

    async def close(self) -> None:
        """Stop polling, finish the queued work of every version (serving and swapped out), stop."""
        self._closing = True
        if self._poller is not None:
            self._poller.cancel()
        entries = [*self.entries.values(), *self.retiring]
        await asyncio.gather(*(b.close() for e in entries for b in e.batchers()))
        for task in list(self._tasks):
            task.cancel()
        self._loader.shutdown(wait=False, cancel_futures=True)

    def get(self, name: str | None, version: int | None = None) -> ServedEntry:
        """The version of model `name` (default: the server's default model) that takes new requests, held
        for the rest of the request; `version`, when given, must be that one."""
        key = name or self.default
        entry = self.entries.get(key)
        if entry is None:
            available = ", ".join(sorted(self.entries))
            if key in self.unavailable:
                reason = self.unavailable[key]
                raise ModelNotLoaded(f"model {key!r} is not loaded ({reason}); available: {available}")
            if key in self.on_disk:
                raise ModelNotLoaded(f"model {key!r} is not loaded; available: {available}")
            raise UnknownModel(f"unknown model {key!r}; available: {available}")
        if version is not None and version != entry.version:
            raise ModelNotLoaded(
                f"version {version} of model {key!r} is not loaded: version {entry.version} serves"
            )
        hold(entry)
        return entry

    def batchers(self) -> list[Batcher]:
        return [b for e in self.entries.values() for b in e.batchers()]

    def known(self, name: str) -> bool:
        """Whether `name` is a model of this server, served or not."""
        return name in self.entries or name in self.on_disk or name in self.unavailable

    # -- the live repository ----------------------------------------------------------------------------
    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def _off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on the loader thread (loading, warming up, scanning, hashing, freeing memory)."""
        return await asyncio.get_running_loop().run_in_executor(self._loader, fn, *args)

    async def refresh(self) -> None:
        """Scan the models folder again (versions on disk and their weights' hashes)."""
        self.on_disk, self.hashes = await self._off_loop(_scan_with_hashes, self.settings.models)

    async def load_version(self, name: str, version: int | None = None) -> ServedEntry:
        """Serve `version` of model `name` (default: its latest on disk): loaded and warmed up beside the
        serving version, then swapped in for new requests. Already serving those same weights: nothing to
        do. Fails with `ModelLoadFailed` (the serving version keeps serving) or `UnknownModel`."""
        async with self._lock(name):
            versions = await self._off_loop(scan_model, self.settings.models, name)
            if versions:
                self.on_disk[name] = versions
            else:
                self.on_disk.pop(name, None)
                raise UnknownModel(
                    f"no model {name!r} in the models folder (no {name}/config.json, no {name}/N/config.json)"
                )
            chosen = max(versions) if version is None else version
            if chosen not in versions:
                raise UnknownModel(f"model {name!r} has no version {chosen} (on disk: {sorted(versions)})")
            source = versions[chosen]
            sha = await self._off_loop(weights_sha256, source.path)
            self.hashes[source.path] = sha
            current = self.entries.get(name)
            same = current is not None and current.model.path == source.path
            if same and current.model.weights_sha256 == sha:
                return current
            self.loading[name] = chosen
            try:
                entry = await self._off_loop(self._build, source, self.settings.warmup)
            except LOAD_ERRORS as exc:
                self.failures[(name, chosen)] = str(exc)
                log.error("model %s version %d failed to load: %s", name, chosen, exc)
                keeps = f"; version {current.version} keeps serving" if current is not None else ""
                message = f"model {name!r} version {chosen} failed to load: {exc}{keeps}"
                raise ModelLoadFailed(message) from None
            finally:
                self.loading.pop(name, None)
            if self._closing:
                raise NotReady("the server is shutting down")
            self._swap_in(entry)
            return entry

    def _swap_in(self, entry: ServedEntry) -> None:
        """Start `entry`'s batchers and make it the version that takes new requests (one step: nothing
        awaits between the lookup table's old and new state); the old one is released in the background."""
        name = entry.model.name
        for batcher in entry.batchers():
            batcher.start()
        old = self.entries.get(name)
        self.entries[name] = entry
        self.unavailable.pop(name, None)
        self.failures.pop((name, entry.version), None)
        self._publish(name, entry.version_label, ready=True)
        log.info(
            "serving %s version %d (weights %s)%s",
            name,
            entry.version,
            entry.model.weights_sha256[:12],
            "" if old is None else f" in place of version {old.version}",
        )
        if old is not None:
            self._retire(old)

    async def unload(self, name: str) -> None:
        """Stop serving model `name`: new requests get a 404 naming it; those that hold it finish on it."""
        async with self._lock(name):
            if name == self.default:
                raise RepositoryConflict(
                    f"model {name!r} is the server's default model (--default-model) and cannot be unloaded; "
                    "load another version of it instead"
                )
            entry = self.entries.pop(name, None)
            if entry is None:
                if not self.known(name):
                    raise UnknownModel(f"unknown model {name!r}")
                return
            self.unavailable[name] = (
                f"unloaded through the repository API; POST /v2/repository/models/{name}/load serves it again"
            )
            self._publish(name, entry.version_label, ready=False)
            log.info("unloaded %s version %d", name, entry.version)
            self._retire(entry)

    def _retire(self, entry: ServedEntry) -> None:
        """Release `entry` in the background, once the requests holding it are answered."""
        self.retiring.append(entry)
        task = asyncio.get_running_loop().create_task(self._release(entry))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _release(self, entry: ServedEntry) -> None:
        """Once the requests holding `entry` are answered: close its batchers, drop it, free its memory."""
        name, version = entry.model.name, entry.version
        try:
            await asyncio.wait_for(entry.wait_idle(), self.settings.request_timeout_s + RELEASE_GRACE_S)
        except TimeoutError:
            held = entry.requests
            log.warning("%s version %d: %d requests still hold it; closing it anyway", name, version, held)
        await asyncio.gather(*(b.close() for b in entry.batchers()))
        self.retiring.remove(entry)
        del entry
        await self._off_loop(release_freed_memory)
        log.info("released %s version %d", name, version)

    def index(self) -> list[VersionState]:
        """Every version of every model, on disk (as of the last scan) or in memory, with its state."""
        states = []
        for name in sorted(set(self.on_disk) | set(self.entries) | set(self.unavailable)):
            on_disk = self.on_disk.get(name, {})
            serving = self.entries.get(name)
            retiring = {e.version: e for e in self.retiring if e.model.name == name}
            versions = set(on_disk) | set(retiring) | ({serving.version} if serving else set())
            for v in sorted(versions):
                path = on_disk[v].path if v in on_disk else None
                sha = self.hashes.get(path) if path is not None else None
                if serving is not None and serving.version == v:
                    states.append(VersionState(name, v, "READY", "", serving.model.weights_sha256))
                elif self.loading.get(name) == v:
                    states.append(VersionState(name, v, "LOADING", "", sha))
                elif v in retiring:
                    reason = "finishing the requests it took, then released"
                    old_sha = retiring[v].model.weights_sha256
                    states.append(VersionState(name, v, "UNLOADING", reason, old_sha))
                else:
                    states.append(VersionState(name, v, "UNAVAILABLE", self._why_not(name, v, serving), sha))
        return states

    def _why_not(self, name: str, version: int, serving: ServedEntry | None) -> str:
        if (name, version) in self.failures:
            return f"failed to load: {self.failures[(name, version)]}"
        if serving is None:
            return self.unavailable.get(name, "not loaded")
        return f"not loaded: version {serving.version} serves"

    def versions(self, name: str) -> list[VersionState]:
        return [s for s in self.index() if s.name == name]

    # -- polling ----------------------------------------------------------------------------------------
    async def poll(self) -> None:
        """One scan of the models folder: each model whose latest version appeared or changed since the
        last scan is loaded and swapped in (a failure is logged, and tried again when its files change)."""
        await self.refresh()
        for name, versions in self.on_disk.items():
            latest = versions[max(versions)]
            seen = fingerprint(latest.path)
            if self._polled.get(name) == seen:
                continue
            self._polled[name] = seen
            try:
                await self.load_version(name, latest.version)
            except (ModelLoadFailed, UnknownModel) as exc:
                log.error("polling: %s", exc.message)

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_models_s)
            try:
                await self.poll()
            except Exception:
                log.exception("polling %s failed", self.settings.models)
