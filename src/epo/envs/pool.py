"""EnvPool: many env slots in worker processes, with batched reset/step and fault tolerance.

    with EnvPool("quest", {"difficulty": "easy"}, num_workers=2) as pool:
        first = pool.reset(["train/00000", "train/00001"])   # [(obs, info)] ; slot i plays task_ids[i]
        outs = pool.step({0: "go north", 1: "look"})         # {slot: (obs, reward, terminated, truncated, info)}
        hints = pool.expert_actions([0, 1])                  # {slot: action or None}

Slot i lives on worker i % num_workers. A worker keeps one env instance per slot and reuses it across resets, so
slow start-ups (ALFWorld game loading, the ScienceWorld JVM) are paid once per worker. A command goes to every
worker first and is gathered afterwards, so workers run in parallel.

Faults end episodes, never the batch. If a worker dies ("worker_crash") or does not answer within the timeout
("timeout": one env call, one slot's reset, step or expert action, took longer than step_timeout_s, or
reset_timeout_s for reset and expert_actions, whose first call may reload the env; a worker runs its slots one after
another and reports each, so the deadline does not grow with its slot count), its whole process group is killed (envs'
children such as JVMs included), a fresh worker is started, and every live episode on it ends with truncated=True
and info {"error", "truncated_reason", "won": False, "valid": False, "admissible_actions": [], "task", ...}.
Slots that were not stepped in that call report it on their next step. An exception inside the env ends only that
slot's episode ("env_error"). The next reset() of any slot works again. mode="inline" runs the same code in-process
(no timeouts, no crash isolation) for debugging.

Every worker fault and env exception is also recorded as a `PoolFault` (worker, reason, task id, message) in
`pool.faults`; callers
take them with `drain_faults()` to log them. reset() first restarts any worker that died while idle (between
steps, "worker_dead"), and retries once the resets of a worker that crashed during them, so a worker that died
between episodes loses no episode.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import multiprocessing.connection
import multiprocessing.util
import os
import pickle
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.reduction import ForkingPickler
from typing import Any

from epo.envs.base import StepOutput
from epo.envs.registry import get_spec
from epo.errors import EnvResetFailed

_POLL_PARENT_S = 1.0
_SLOT_DONE = b""  # worker -> parent: one more slot of the command is done (a reply is never empty)
_CLOSE_GRACE_S = 5.0


# ---- the part that runs inside a worker (or inline) ---------------------------------------------------------
class _SlotEnvs:
    """Env instances keyed by slot; executes one command for many slots. Exceptions become per-slot errors."""

    def __init__(self, make_env: Callable[..., Any], env_kwargs: dict[str, Any]):
        self.make_env = make_env
        self.env_kwargs = env_kwargs
        self.envs: dict[int, Any] = {}

    def _env(self, slot: int) -> Any:
        if slot not in self.envs:
            self.envs[slot] = self.make_env(**self.env_kwargs)
        return self.envs[slot]

    def _drop(self, slot: int) -> None:
        """A raising env may be broken: rebuild it on the next reset."""
        env = self.envs.pop(slot, None)
        with contextlib.suppress(Exception):
            if env is not None:
                env.close()

    def handle(
        self, cmd: str, payload: dict[int, Any], on_slot: Callable[[], None] | None = None
    ) -> dict[int, tuple[str, Any]]:
        """{slot: ("ok", result) or ("env_error", message)}; on_slot() after each slot but the last (a heartbeat).
        "release" closes every env instance of this worker (no payload, no result)."""
        if cmd == "release":
            self.close()
            return {}
        results: dict[int, tuple[str, Any]] = {}
        for i, (slot, arg) in enumerate(payload.items()):
            if i and on_slot is not None:
                on_slot()
            try:
                if cmd == "reset":
                    out = self._env(slot).reset(options={"task_id": arg})
                elif cmd == "step":
                    out = self._env(slot).step(arg)
                elif cmd == "expert":
                    out = self._env(slot).expert_action() if slot in self.envs else None
                else:
                    raise ValueError(f"unknown command {cmd!r}")
                results[slot] = ("ok", out)
            except Exception as e:  # the env's own failure: report it, keep serving the other slots
                results[slot] = ("env_error", f"{type(e).__name__}: {e}")
                if cmd != "expert":
                    self._drop(slot)
        return results

    def close(self) -> None:
        for slot in list(self.envs):
            self._drop(slot)


def _watch_parent(parent_pid: int) -> None:
    """If the parent dies without closing us (SIGKILL), take our process group (and the envs' children) down."""
    while True:
        time.sleep(_POLL_PARENT_S)
        if os.getppid() != parent_pid:
            os.killpg(os.getpgrp(), signal.SIGKILL)


def _encode(results: dict[int, tuple[str, Any]]) -> bytes:
    """Pickle a reply; an env returning something unpicklable fails its own slot, not the whole worker."""
    try:
        return ForkingPickler.dumps(results)  # what Connection.send would do
    except Exception:
        return ForkingPickler.dumps(picklable_only(results))


def picklable_only(results: dict[int, tuple[str, Any]]) -> dict[int, tuple[str, Any]]:
    """Each slot's result, or an "env_error" for the slots whose result cannot be pickled (sent to the parent)."""
    safe = {}
    for slot, result in results.items():
        try:
            ForkingPickler.dumps(result)
            safe[slot] = result
        except Exception as e:
            safe[slot] = ("env_error", f"the env returned something unpicklable ({type(e).__name__}: {e})")
    return safe


def _worker_main(conn: Any, make_env: Callable[..., Any], env_kwargs: dict[str, Any], parent_pid: int) -> None:
    os.setpgrp()  # own process group: killpg(worker pid) also kills what the envs spawned (JVMs)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it closes us
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    envs = _SlotEnvs(make_env, env_kwargs)
    try:
        while True:
            try:
                cmd, payload = conn.recv()
            except EOFError:
                break
            if cmd == "close":
                break
            # an empty message after each slot but the last: the parent's deadline is per env call, not per batch
            conn.send_bytes(_encode(envs.handle(cmd, payload, on_slot=lambda: conn.send_bytes(_SLOT_DONE))))
    finally:
        envs.close()


# ---- the parent side --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PoolFault:
    """One worker fault: the worker index, why ("worker_crash", "timeout", "worker_dead": found dead before a
    reset, "env_error": an exception inside the env), the task of one episode it ended ("" if it ended none) and the
    pool's message."""

    worker: int
    reason: str
    task: str
    message: str

    def line(self) -> str:
        on = f" on task {self.task}" if self.task else ""
        return f"env worker {self.worker} {self.reason}{on}: {self.message}"


class _Worker:
    """One worker process and the parent's end of its pipe."""

    def __init__(self, ctx: Any, make_env: Callable[..., Any], env_kwargs: dict[str, Any]):
        self.conn, child_conn = ctx.Pipe()
        self.process = ctx.Process(
            target=_worker_main, args=(child_conn, make_env, env_kwargs, os.getpid()), name="epo-env-worker"
        )
        self.process.start()
        child_conn.close()

    def kill(self) -> None:
        pid = self.process.pid
        # the worker's group: the worker and whatever its envs started; OSError: no such group yet (killed
        # before setpgrp) or already gone
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)
        self.process.kill()
        self.process.join(timeout=_CLOSE_GRACE_S)
        self.conn.close()


def _shutdown(workers: list[_Worker | None]) -> None:
    """Ask every worker to close its envs, give them a shared grace period, then kill the groups regardless."""
    live = [w for w in workers if w is not None]
    for worker in live:
        with contextlib.suppress(OSError, ValueError):  # already dead: killed below anyway
            worker.conn.send(("close", None))
    deadline = time.monotonic() + _CLOSE_GRACE_S
    for worker in live:
        worker.process.join(timeout=max(0.0, deadline - time.monotonic()))
    for worker in live:
        worker.kill()
    workers[:] = [None] * len(workers)


def _ended(reason: str, message: str, last_info: dict[str, Any]) -> StepOutput:
    info = {
        "error": message,
        "truncated_reason": reason,
        "won": False,
        "valid": False,
        "admissible_actions": [],
        "task": last_info.get("task", ""),
        "task_type": last_info.get("task_type", ""),
    }
    return f"[episode ended by the env pool: {reason}] {message}", 0.0, False, True, info


class EnvPool:
    """Batched, fault-tolerant env slots. See the module docstring."""

    def __init__(
        self,
        env_name: str,
        env_kwargs: dict[str, Any] | None = None,
        num_workers: int = 1,
        mode: str = "process",
        step_timeout_s: float = 60.0,
        reset_timeout_s: float = 300.0,
    ):
        if mode not in ("process", "inline"):
            raise ValueError(f"EnvPool mode must be 'process' or 'inline', got {mode!r}")
        if num_workers < 1:
            raise ValueError(f"EnvPool needs num_workers >= 1, got {num_workers}")
        self.env_name, self.mode = env_name, mode
        self.env_kwargs = dict(env_kwargs or {})
        self.num_workers = num_workers
        self.step_timeout_s, self.reset_timeout_s = step_timeout_s, reset_timeout_s
        self._make_env = get_spec(env_name).make
        self._last_info: dict[int, dict[str, Any]] = {}  # slot -> last info seen (for "task" after a crash)
        self._active: set[int] = set()
        self._lost: dict[int, tuple[str, str]] = {}  # live slot -> (reason, message) of a worker that died under it
        self._tasks: dict[int, str] = {}  # slot -> task id of its current episode
        self.faults: list[PoolFault] = []  # worker faults not yet taken by drain_faults()
        self._closed = False
        self._workers: list[_Worker | None] = []
        if mode == "inline":
            self._inline = [_SlotEnvs(self._make_env, self.env_kwargs) for _ in range(num_workers)]
            return
        try:
            pickle.dumps((self._make_env, self.env_kwargs))
        except Exception as e:
            raise ValueError(f"env '{env_name}': its make function or kwargs cannot be sent to a worker ({e}); "
                             "define make at module level or use mode='inline'") from e  # fmt: skip
        self._ctx = mp.get_context("spawn")  # safe with torch/CUDA already loaded in the parent
        # runs at interpreter exit (before multiprocessing joins children) and when the pool is garbage collected
        self._finalizer = mp.util.Finalize(self, _shutdown, args=(self._workers,), exitpriority=10)
        try:
            for _ in range(num_workers):
                self._workers.append(_Worker(self._ctx, self._make_env, self.env_kwargs))
        except BaseException:
            self.close()
            raise

    # ---- public API ------------------------------------------------------------------------------------------
    def worker_of(self, slot: int) -> int:
        return slot % self.num_workers

    def worker_pids(self) -> list[int]:
        """Process ids of the workers (empty in inline mode)."""
        return [w.process.pid for w in self._workers if w is not None]

    @property
    def active_slots(self) -> list[int]:
        return sorted(self._active)

    def reset(self, task_ids: list[str]) -> list[tuple[str, dict[str, Any]]]:
        """Start slot i on task_ids[i]; slots beyond len(task_ids) become inactive."""
        self._check_open()
        self._active.clear()
        self._lost.clear()
        self._tasks = {slot: str(task_id) for slot, task_id in enumerate(task_ids)}
        self.revive_dead_workers()
        replies = self._call("reset", dict(enumerate(task_ids)), self.reset_timeout_s)
        self._record_env_errors(replies)
        # A worker that died just before or during the resets (not caught by the revive: a kill racing it) is
        # already restarted; a reset starts an episode afresh, so retrying it once on the new worker loses nothing.
        crashed = {s: task_ids[s] for s, (status, _) in replies.items() if status == "worker_crash"}
        if crashed:
            retried = self._call("reset", crashed, self.reset_timeout_s)
            self._record_env_errors(retried)
            replies.update(retried)
        results = []
        for slot, task_id in enumerate(task_ids):
            status, out = replies[slot]
            if status == "ok":
                self._last_info[slot] = out[1]
                self._active.add(slot)
                results.append(out)
            else:
                obs, _, _, _, info = _ended(status, out, {"task": str(task_id)})
                self._last_info[slot] = info
                results.append((obs, info))
        if task_ids and not self._active and all(r[1]["truncated_reason"] == "env_error" for r in results):
            raise EnvResetFailed(f"env '{self.env_name}': every reset failed, e.g. {results[0][1]['error']}")
        return results

    def step(self, actions: dict[int, str]) -> dict[int, StepOutput]:
        """Step the given live slots; returns {slot: (obs, reward, terminated, truncated, info)}."""
        self._check_open()
        not_live = sorted(set(actions) - self._active)
        if not_live:
            raise ValueError(f"EnvPool.step: slots {not_live} have no live episode (finished or never reset)")
        outs: dict[int, StepOutput] = {}
        for slot in [s for s in actions if s in self._lost]:
            outs[slot] = _ended(*self._lost.pop(slot), self._last_info.get(slot, {}))
        replies = self._call("step", {s: a for s, a in actions.items() if s not in outs}, self.step_timeout_s)
        self._record_env_errors(replies)
        for slot, (status, out) in replies.items():
            outs[slot] = out if status == "ok" else _ended(status, out, self._last_info.get(slot, {}))
        for slot, out in outs.items():
            self._lost.pop(slot, None)  # reported now
            self._last_info[slot] = out[4]
            if out[2] or out[3]:
                self._active.discard(slot)
        return {slot: outs[slot] for slot in actions}

    def expert_actions(self, slots: list[int]) -> dict[int, str | None]:
        """The env oracle's next action per slot (None: no oracle, episode over, or the worker failed)."""
        self._check_open()
        ask = {s: None for s in slots if s in self._active and s not in self._lost}
        # the reset deadline: an episode's first expert call may be a reset's work (ScienceWorld reloads the task to
        # generate its gold path, seconds on a loaded machine)
        replies = self._call("expert", ask, self.reset_timeout_s)
        self._record_env_errors(replies)
        return {s: replies[s][1] if s in replies and replies[s][0] == "ok" else None for s in slots}

    def _record_env_errors(self, replies: dict[int, tuple[str, Any]]) -> None:
        """An exception inside an env ends only its slot's episode, and is a fault like a crash: one PoolFault each,
        so its message reaches the console and faults.jsonl, not only the rollout/env_errors count."""
        for slot, (status, message) in sorted(replies.items()):
            if status == "env_error":
                self.faults.append(PoolFault(self.worker_of(slot), "env_error", self._tasks.get(slot, ""), message))

    def release_envs(self) -> None:
        """Close every env instance, keeping the workers; live episodes end, the next reset() makes new envs. For a
        phase that holds the pool but plays nothing for long (behaviour cloning), as ScienceWorld holds a JVM per
        env: 16 idle ones took 13 GB of a 24 GB machine while cloning."""
        self._check_open()
        self._active.clear()
        self._lost.clear()
        if self.mode == "inline":
            for envs in self._inline:
                envs.close()
        else:  # a worker that fails to answer is restarted, which also leaves it without envs
            self._call_workers("release", {w: {} for w in range(len(self._workers))}, self.reset_timeout_s)

    def revive_dead_workers(self) -> list[int]:
        """Restart workers that died while idle (killed between commands); returns their indices."""
        if self.mode == "inline":
            return []
        dead = [w for w, worker in enumerate(self._workers) if worker is not None and not worker.process.is_alive()]
        for w in dead:
            code = self._workers[w].process.exitcode
            self._restart(w, "worker_dead", f"worker {w} had died while idle (exit code {code}); restarted", [])
        return dead

    def drain_faults(self) -> list[PoolFault]:
        """The worker faults recorded since the last call (oldest first)."""
        faults, self.faults = self.faults, []
        return faults

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.mode == "inline":
            for envs in self._inline:
                envs.close()
        else:
            self._finalizer()  # runs _shutdown once

    def __enter__(self) -> EnvPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- internals -------------------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("EnvPool is closed")

    def _call(self, cmd: str, per_slot: dict[int, Any], timeout_s: float) -> dict[int, tuple[str, Any]]:
        """Send each worker its slots' share, then gather; failures become per-slot ("reason", message)."""
        by_worker = self._by_worker(per_slot)
        if self.mode == "inline":
            return {s: r for w, share in by_worker.items() for s, r in self._inline[w].handle(cmd, share).items()}
        try:
            return self._call_workers(cmd, by_worker, timeout_s)
        except BaseException:
            # Ctrl-C or a bug mid-call leaves replies in flight: the pipes are out of sync, so shut everything down
            self.close()
            raise

    def _call_workers(
        self, cmd: str, by_worker: dict[int, dict[int, Any]], timeout_s: float
    ) -> dict[int, tuple[str, Any]]:
        replies: dict[int, tuple[str, Any]] = {}
        failed: dict[int, tuple[str, str]] = {}
        pending: dict[Any, int] = {}
        for w, share in by_worker.items():
            try:
                self._workers[w].conn.send((cmd, share))
                pending[self._workers[w].conn] = w
            except (OSError, ValueError) as e:
                failed[w] = ("worker_crash", f"worker {w} is gone ({type(e).__name__}: {e})")
        start = time.monotonic()
        deadline = {w: start + timeout_s for w in pending.values()}  # per env call: each slot done moves it on
        done = dict.fromkeys(pending.values(), 0)
        while pending:
            wait_s = max(0.0, min(deadline[w] for w in pending.values()) - time.monotonic())
            ready = mp.connection.wait(list(pending), timeout=wait_s)
            if not ready:
                for conn, w in [(c, w) for c, w in pending.items() if deadline[w] <= time.monotonic()]:
                    del pending[conn]
                    failed[w] = ("timeout", f"worker {w}: an env's '{cmd}' did not return within {timeout_s:g} s "
                                            f"({done[w]} of its {len(by_worker[w])} slot(s) done)")  # fmt: skip
                continue
            for conn in ready:
                w = pending[conn]
                try:
                    data = conn.recv_bytes()
                    if data == _SLOT_DONE:
                        done[w] += 1
                        deadline[w] = time.monotonic() + timeout_s
                        continue
                    del pending[conn]
                    replies.update(pickle.loads(data))
                except Exception as e:  # EOFError when the worker died; anything else: a garbled pipe
                    pending.pop(conn, None)
                    code = self._workers[w].process.exitcode
                    failed[w] = ("worker_crash", f"worker {w} died (exit code {code}; {type(e).__name__})")
        return self._restart_failed(failed, by_worker, replies)

    # ---- worker replacement and fault records, shared by every executor (RayEnvPool overrides _replace only) ----
    def _by_worker(self, per_slot: dict[int, Any]) -> dict[int, dict[int, Any]]:
        """{worker: {slot: arg}}: each worker's share of a command."""
        by_worker: dict[int, dict[int, Any]] = {}
        for slot, arg in per_slot.items():
            by_worker.setdefault(self.worker_of(slot), {})[slot] = arg
        return by_worker

    def _restart_failed(
        self,
        failed: dict[int, tuple[str, str]],
        by_worker: dict[int, dict[int, Any]],
        replies: dict[int, tuple[str, Any]],
    ) -> dict[int, tuple[str, Any]]:
        """Restart each failed worker {w: (reason, message)}; each slot it was called for replies (reason, message)."""
        for w, (reason, message) in failed.items():
            self._restart(w, reason, message, list(by_worker[w]))
            for slot in by_worker[w]:
                replies[slot] = (reason, message)
        return replies

    def _restart(self, w: int, reason: str, message: str, called: list[int]) -> None:
        """Replace worker w; its live episodes end. One PoolFault per episode ended (or one without a task)."""
        self._replace(w)
        self._end_episodes_of(w, reason, message, called)

    def _replace(self, w: int) -> None:
        """Kill worker w (its process group) and start a fresh one in its place."""
        self._workers[w].kill()
        self._workers[w] = _Worker(self._ctx, self._make_env, self.env_kwargs)

    def _end_episodes_of(self, w: int, reason: str, message: str, called: list[int]) -> None:
        """Bookkeeping of a replaced worker w: its live episodes end, one PoolFault each."""
        ended = set(called)
        for slot in self._active:
            if self.worker_of(slot) == w:
                self._lost[slot] = (reason, message)
                ended.add(slot)
        tasks = [self._tasks.get(slot, "") for slot in sorted(ended)] or [""]
        self.faults.extend(PoolFault(w, reason, task, message) for task in tasks)
