"""The monitor's scheduler: polls every repository every ``poll_every``,
checks each every ``check_every`` (the time of the last check is in the
state, so the schedule resumes across restarts), evaluates the alert
conditions after each poll and check, and delivers.

Threads: one scheduler, ``workers`` workers for polls and checks (a long
check does not delay the polls of other repositories, nor of its own), one
deliverer.  All are daemon threads: stopping never waits for a check to end
(its result is then simply not recorded, and it runs again)."""

from __future__ import annotations

import logging
import queue
import threading
import time

from ..errors import RekkordError
from .alerts import AlertEngine
from .config import MonitorConfig
from .notify import Deliverer
from .state import State
from .watch import Watcher, cache_dir, check_due, conditions

log = logging.getLogger("rekkord.monitor")


class Monitor:
    def __init__(self, config: MonitorConfig, *, state: State | None = None, clock=time.time, mail=None,
                 webhook=None):
        self.config = config
        self.clock = clock
        self.state = state or State(config.state_path)
        self._wake = threading.Event()  # the scheduler's
        self._deliver_wake = threading.Event()
        self.engine = AlertEngine(self.state, config, clock, on_enqueue=self._deliver_wake.set)
        kw = {k: v for k, v in (("mail", mail), ("webhook", webhook)) if v is not None}
        self.deliverer = Deliverer(self.state, config, clock, **kw)
        self.watchers = {rc.name: Watcher(rc, rc.load_key(), self.state, cache_dir(config), clock)
                         for rc in config.repos}
        for rc in config.repos:
            self.state.repository(rc.name)
        self._stop = threading.Event()
        self._jobs: queue.Queue = queue.Queue()
        self._busy: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._eval_lock = threading.Lock()

    # ---- one step of each kind (also used directly by tests and --once) -------------------------------

    def poll(self, name: str) -> bool:
        ok = self._guard(name, "poll", self.watchers[name].poll)
        self.evaluate(name)
        return bool(ok)

    def check(self, name: str):
        row = self._guard(name, "check", self.watchers[name].check)
        self.evaluate(name)
        if row and row["status"] in ("clean", "damaged"):
            conds = {a["kind"] for a in self.state.open_alerts(name)}
            if "size" not in conds:
                self.watchers[name].accept_size()
        return row

    def _guard(self, name: str, what: str, fn):
        try:
            return fn()
        except Exception:  # a bug: logged with its traceback, and the service goes on
            log.exception("repository %s: %s failed with an internal error", name, what)
            if what == "poll":
                r = self.state.repository(name)
                self.state.update_repository(name, last_poll=self.clock(), failed_polls=r["failed_polls"] + 1,
                                             poll_error="internal error (see the service log)")
            return None

    def evaluate(self, name: str) -> list:
        with self._eval_lock:
            rc = self.config.repo(name)
            conds, keep = conditions(self.state, self.config, rc, self.clock())
            return self.engine.update(name, conds, keep)

    def acknowledge(self, alert_id: int, user: str) -> bool:
        a = self.state.one("SELECT * FROM alerts WHERE id = ?", (alert_id,))
        if a is None or not self.engine.acknowledge(alert_id, user):
            return False
        log.info("alert %d (%s) acknowledged by %s", alert_id, a["title"], user)
        if a["kind"] == "size" and a["repo"] in self.watchers:
            self.watchers[a["repo"]].accept_size()
            self.evaluate(a["repo"])
        return True

    def request_check(self, name: str) -> None:
        self.state.update_repository(name, check_requested=self.clock())
        self._wake.set()

    def run_once(self, *, check: bool | None = None) -> None:
        """Poll every repository, check those due (all with ``check=True``,
        none with False), evaluate and deliver what can be delivered now."""
        for name in self.watchers:
            self.poll(name)
        for name, w in self.watchers.items():
            if check or (check is None and check_due(self.state, self.config, w.rc, self.clock())):
                self.check(name)
        self.deliverer.run_due()

    # ---- threads --------------------------------------------------------------------------------

    def start(self) -> None:
        def loop(target, name):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

        loop(self._schedule, "rekkord-monitor-scheduler")
        for i in range(self.config.workers):
            loop(self._work, f"rekkord-monitor-worker-{i}")
        loop(self._deliver, "rekkord-monitor-delivery")
        log.info("monitor started: %d repositories, poll every %.0fs", len(self.watchers), self.config.poll_every)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        self._deliver_wake.set()
        for _ in self._threads:
            self._jobs.put(None)
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self._threads = []

    def _submit(self, name: str, what: str) -> None:
        with self._lock:
            if (name, what) in self._busy:
                return
            self._busy.add((name, what))
        self._jobs.put((name, what))

    def _work(self) -> None:
        while not self._stop.is_set():
            job = self._jobs.get()
            if job is None:
                return
            name, what = job
            try:
                (self.poll if what == "poll" else self.check)(name)
            except Exception:
                log.exception("repository %s: %s", name, what)
            finally:
                with self._lock:
                    self._busy.discard(job)
                self._wake.set()

    def _schedule(self) -> None:
        while not self._stop.is_set():
            now = self.clock()
            for name, w in self.watchers.items():
                try:
                    r = self.state.repository(name)
                    if r["last_poll"] is None or now - r["last_poll"] >= self.config.poll_every:
                        self._submit(name, "poll")
                    if r["last_poll_ok"] is not None and check_due(self.state, self.config, w.rc, now):
                        self._submit(name, "check")  # (alongside polls: a long check delays none)
                except (RekkordError, OSError, ValueError):
                    log.exception("scheduling %s", name)
            self._wake.wait(min(1.0, self.config.poll_every / 4))
            self._wake.clear()

    def _deliver(self) -> None:
        while not self._stop.is_set():
            try:
                self.deliverer.run_due()
            except Exception:
                log.exception("delivery")
            self._deliver_wake.wait(min(1.0, self.config.retry_delay / 4))
            self._deliver_wake.clear()

    def close(self) -> None:
        self.stop()
        self.state.close()
