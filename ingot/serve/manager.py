"""Which model versions serve, and their lifecycle: load → warm up → swap → drain → unload.

A load reads the model's folder as it is now, loads every version its policy selects that is
not already serving, and only then swaps the routing table in one assignment, so a request
sees either the old set of versions or the new one. Versions no longer selected then drain
their in-flight requests and close. A version that fails to load is recorded with its reason
(RepositoryIndex, the log) and the versions serving keep serving.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from ingot.plans import BundleError
from ingot.runtime.errors import RunError
from ingot.serve.errors import LoadError, NotFound, ServeError, Unavailable
from ingot.serve.repository import Repository
from ingot.serve.served import RuntimeOptions, Served, open_version

log = logging.getLogger("ingot.serve")


@dataclass
class VersionState:
    """A version as RepositoryIndex reports it: UNAVAILABLE, LOADING, READY or UNLOADING."""

    state: str
    reason: str = ""


class ModelManager:
    def __init__(self, repo: Repository, options: RuntimeOptions):
        self.repo, self.options = repo, options
        self.serving: dict[str, dict[int, Served]] = {}  # routing: model → version → loaded version
        self.states: dict[str, dict[int, VersionState]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._closing: set[asyncio.Task] = set()
        self.observer = None  # metrics, handed to every version loaded

    # ---- routing

    def get(self, name: str, version: str = "") -> Served:
        """The version a request goes to ("" or "-1": the latest serving)."""
        versions = self.serving.get(name)
        if not versions:
            if name in self.states or name in self._known():
                raise Unavailable(f"model {name!r} is not ready{self._reason(name)}")
            raise NotFound(f"unknown model {name!r}; models: {', '.join(sorted(self.serving)) or 'none loaded'}")
        if version in ("", "-1"):
            return versions[max(versions)]
        try:
            v = int(version)
        except ValueError:
            raise NotFound(f"model {name!r} has no version {version!r}; serving {sorted(versions)}") from None
        if v not in versions:
            raise NotFound(f"model {name!r} version {v} is not serving; serving {sorted(versions)}")
        return versions[v]

    def ready(self, name: str, version: str = "") -> bool:
        try:
            self.get(name, version)
            return True
        except ServeError:
            return False

    def loaded(self) -> list[Served]:
        return [s for versions in self.serving.values() for s in versions.values()]

    def index(self, ready_only: bool = False) -> list[tuple[str, int | None, str, str]]:
        """(name, version, state, reason) of every model in the repository and every version seen."""
        rows = []
        for name in sorted(set(self._known()) | set(self.states)):
            states = self.states.get(name, {})
            if not states:
                rows.append((name, None, "UNAVAILABLE", "not loaded"))
            for v, st in sorted(states.items()):
                rows.append((name, v, st.state, st.reason))
        return [r for r in rows if r[2] == "READY"] if ready_only else rows

    # ---- lifecycle

    async def load(self, name: str) -> None:
        """Load (or reload) a model; raises ServeError when nothing of it can serve."""
        async with self._lock(name):
            entry = self.repo.entry(name)
            wanted = entry.selected()
            if not wanted:
                raise ServeError(f"model {name!r}: no version folder matches its version policy "
                                 f"(found {sorted(entry.versions) or 'none'})")
            current = dict(self.serving.get(name, {}))
            states = self.states.setdefault(name, {})
            new: dict[int, Served] = {}
            failures = []
            for v in wanted:
                if v in current and current[v].config == entry.config:
                    new[v] = current[v]
                    continue
                states[v] = VersionState("LOADING")
                try:
                    served = await asyncio.to_thread(open_version, name, v, entry.versions[v], entry.config,
                                                     self.options)
                    await served.warm_up()
                    served.observer = self.observer
                except Exception as e:  # noqa: BLE001 - any failure leaves what serves in place
                    reason = str(e) if isinstance(e, RunError | BundleError | OSError) else f"{type(e).__name__}: {e}"
                    reason = reason.splitlines()[0] if reason else type(e).__name__
                    states[v] = VersionState("UNAVAILABLE", f"load failed: {reason}")
                    log.error("model %s version %d failed to load: %s", name, v, reason)
                    failures.append(f"version {v}: {reason}")
                    if v in current:
                        new[v] = current[v]  # the old copy of this version keeps serving
                        states[v] = VersionState("READY", f"reload failed, previous copy serving: {reason}")
                    continue
                new[v] = served
                states[v] = VersionState("READY")
                log.info("model %s version %d ready", name, v)
            if not new:
                raise LoadError(f"model {name!r} failed to load: {'; '.join(failures)}")
            self.serving[name] = new  # the swap
            for v, old in current.items():
                if new.get(v) is not old:
                    if v not in new:
                        states[v] = VersionState("UNLOADING")
                    self._retire(old, states, v if v not in new else None)
            if failures:
                raise LoadError(f"model {name!r}: {'; '.join(failures)}; "
                                 f"serving version(s) {sorted(new)}")

    async def unload(self, name: str) -> None:
        """Stop routing to the model, drain its requests, close it."""
        async with self._lock(name):
            versions = self.serving.pop(name, None)
            if versions is None:
                if name not in self._known() and name not in self.states:
                    raise NotFound(f"unknown model {name!r}")
                return
            states = self.states.setdefault(name, {})
            for v in versions:
                states[v] = VersionState("UNLOADING")
            await asyncio.gather(*(self._close(s, states, v) for v, s in versions.items()))

    async def shutdown(self, grace: float | None) -> None:
        """Drain every version for up to `grace` seconds, then close them all."""
        everything = self.loaded()
        self.serving = {}
        await asyncio.gather(*(s.drain(grace) for s in everything))
        await asyncio.gather(*(s.close() for s in everything), return_exceptions=True)
        await asyncio.gather(*self._closing, return_exceptions=True)

    # ---- helpers

    def _retire(self, served: Served, states: dict[int, VersionState], version: int | None) -> None:
        task = asyncio.get_running_loop().create_task(self._close(served, states, version))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close(self, served: Served, states: dict[int, VersionState], version: int | None) -> None:
        await served.drain()
        await served.close()
        if version is not None:
            states[version] = VersionState("UNAVAILABLE", "unloaded")
        log.info("model %s version %d unloaded", served.name, served.version)

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def _known(self) -> list[str]:
        try:
            return self.repo.names()
        except OSError:
            return []

    def _reason(self, name: str) -> str:
        reasons = [f"version {v}: {s.reason}" for v, s in sorted(self.states.get(name, {}).items()) if s.reason]
        return f" ({'; '.join(reasons)})" if reasons else ""
