"""EnvPool with its workers as Ray actors (`env.executor=ray`): env slots spread over a Ray cluster.

    ray.init(address="auto")     # or nothing: the pool joins a running instance or starts a local one
    with RayEnvPool("sciworld", {}, num_workers=32, num_cpus_per_worker=1, memory_mb=2048) as pool:
        ...                      # the EnvPool API: reset / step / expert_actions / close

Same slot layout and fault semantics as the local pool (epo.envs.pool): slot i lives on actor i % num_workers,
which keeps one env per slot; a command goes to every actor first and is gathered as it streams back: an actor
yields each slot's reply as soon as that env call returns (a Ray generator), so the deadline is per env call, as in
the local pool, not per batch (an actor serving 16 ScienceWorld slots is not a timeout; a hang on its first is one
after step_timeout_s, not 16 times that).
A dead actor (its process killed, its node lost: RayActorError) ends its live episodes truncated with
"worker_crash"; an actor that misses the deadline is killed ("timeout"); either way a fresh actor replaces it and
the next reset works again. An exception inside the env ends only that slot ("env_error"), as locally.

Resources: each actor declares `num_cpus` (and `memory` when given), and actors are placed with Ray's SPREAD
strategy, so ScienceWorld JVMs (one per env, ~1 CPU and 1-2 GB each) spread over the cluster's nodes instead of
piling onto the driver's. `ray` is an optional dependency (`pip install 'epo[ray]'`).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from typing import Any

from epo.envs.pool import EnvPool, _SlotEnvs, picklable_only


def _ray():
    try:
        import ray
    except ImportError:
        raise ImportError("env.executor=ray needs Ray: pip install 'epo[ray]' (or pip install ray)") from None
    return ray


class _EnvActor:
    """One Ray actor: env instances keyed by slot (the local pool's worker loop, as actor methods)."""

    def __init__(self, make_env, env_kwargs: dict[str, Any]):
        self.envs = _SlotEnvs(make_env, env_kwargs)

    def handle(self, cmd: str, payload: dict[int, Any]) -> Iterator[dict[int, tuple[str, Any]]]:
        """A Ray generator: one {slot: reply} per slot, yielded when its env call returns (the driver's heartbeat).
        A reply Ray could not send would end the whole stream, so an unpicklable one fails its own slot here."""
        if cmd == "release":
            self.envs.handle(cmd, payload)
            return
        for slot, arg in payload.items():
            yield picklable_only(self.envs.handle(cmd, {slot: arg}))

    def pid(self) -> int:
        return os.getpid()

    def close(self) -> None:
        self.envs.close()


class RayEnvPool(EnvPool):
    """EnvPool whose workers are Ray actors. See the module docstring."""

    def __init__(
        self,
        env_name: str,
        env_kwargs: dict[str, Any] | None = None,
        num_workers: int = 1,
        step_timeout_s: float = 60.0,
        reset_timeout_s: float = 300.0,
        num_cpus_per_worker: float = 1.0,
        memory_mb: int = 0,
        address: str = "",
    ):
        ray = _ray()
        # the parent's bookkeeping (slots, lost episodes, last infos) without its local processes
        super().__init__(env_name, env_kwargs, num_workers, mode="inline", step_timeout_s=step_timeout_s,
                         reset_timeout_s=reset_timeout_s)  # fmt: skip
        for envs in self._inline:
            envs.close()
        self._inline = []
        self.mode = "ray"
        if not ray.is_initialized():
            ray.init(address=address or None, include_dashboard=False, log_to_driver=False)
        options: dict[str, Any] = {"num_cpus": num_cpus_per_worker, "max_restarts": 0, "scheduling_strategy": "SPREAD"}
        if memory_mb:
            options["memory"] = memory_mb * 1024 * 1024
        self._actor_cls = ray.remote(_EnvActor).options(**options)
        self._workers = [self._start() for _ in range(num_workers)]

    def _start(self):
        return self._actor_cls.remote(self._make_env, self.env_kwargs)

    # ---- public API additions --------------------------------------------------------------------------------
    def worker_pids(self) -> list[int]:
        ray = _ray()
        return ray.get([a.pid.remote() for a in self._workers], timeout=self.reset_timeout_s)

    def actors(self) -> list[Any]:
        """The actor handles, slot i on actors()[i % num_workers] (tests kill one with ray.kill)."""
        return list(self._workers)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        ray = _ray()
        with contextlib.suppress(Exception):  # best effort: envs close their JVMs; dead actors raise here
            ray.get([a.close.remote() for a in self._workers], timeout=10.0)
        for actor in self._workers:
            with contextlib.suppress(Exception):
                ray.kill(actor)
        self._workers = []

    # ---- internals (override the local pool's process handling) -----------------------------------------------
    def _call(self, cmd: str, per_slot: dict[int, Any], timeout_s: float) -> dict[int, tuple[str, Any]]:
        # unlike the local pool, no close() on an exception: a reply left in flight is an ObjectRef, not a pipe
        return self._call_workers(cmd, self._by_worker(per_slot), timeout_s)

    def _call_workers(
        self, cmd: str, by_worker: dict[int, dict[int, Any]], timeout_s: float
    ) -> dict[int, tuple[str, Any]]:
        ray = _ray()
        streams = {w: self._workers[w].handle.remote(cmd, share) for w, share in by_worker.items()}  # generators
        deadline = dict.fromkeys(streams, time.monotonic() + timeout_s)  # per env call: each reply moves it on
        replies: dict[int, tuple[str, Any]] = {}
        failed: dict[int, tuple[str, str]] = {}
        while streams:
            wait_s = max(0.0, min(deadline.values()) - time.monotonic())
            ready, _ = ray.wait(list(streams.values()), num_returns=1, timeout=wait_s)
            for w in [w for w, stream in streams.items() if any(stream is r for r in ready)]:
                outcome = self._next_reply(streams[w], w, by_worker[w], replies)
                if outcome is None:
                    deadline[w] = time.monotonic() + timeout_s
                    continue
                del streams[w], deadline[w]
                if outcome:
                    failed[w] = outcome
            for w in [w for w, t in deadline.items() if t <= time.monotonic()]:
                done = sum(slot in replies for slot in by_worker[w])
                del streams[w], deadline[w]
                failed[w] = ("timeout", f"worker {w}: an env's '{cmd}' did not return within {timeout_s:g} s "
                                        f"({done} of its {len(by_worker[w])} slot(s) done)")  # fmt: skip
        return self._restart_failed(failed, by_worker, replies)  # lost episodes and PoolFaults, as the local pool

    @staticmethod
    def _next_reply(stream, w: int, share: dict[int, Any], replies: dict[int, tuple[str, Any]]) -> tuple | None:
        """Take one streamed reply of worker w into replies. None: more to come; () the stream ended; (reason,
        message) the worker failed."""
        ray = _ray()
        try:
            replies.update(ray.get(next(stream)))
            return None
        except StopIteration:  # every slot answered (a stream never ends early without raising)
            for slot in share:
                replies.setdefault(slot, ("env_error", f"worker {w} ended its replies without this slot"))
            return ()
        except ray.exceptions.RayActorError as e:  # the actor's process or node died
            return ("worker_crash", f"worker {w} died ({type(e).__name__})")
        except Exception as e:  # the stream broke inside the actor: the slots it did not answer are suspect
            for slot in share:
                replies.setdefault(slot, ("env_error", f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"))
            return ()

    def _replace(self, w: int) -> None:
        with contextlib.suppress(Exception):  # already dead
            _ray().kill(self._workers[w])
        self._workers[w] = self._start()

    def revive_dead_workers(self) -> list[int]:
        """Nothing to poll without a round trip: an actor that died while idle fails its reset with
        "worker_crash", is replaced, and EnvPool.reset retries that reset once on the new actor."""
        return []
