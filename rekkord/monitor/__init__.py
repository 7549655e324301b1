"""rekkord monitor: a service that watches many repositories with audit keys
only (docs/guide-monitoring.md).

* ``config``  — the TOML file: repositories, channel expectations, schedule,
  alert targets, users; ``check_config`` names every problem.
* ``state``   — SQLite with a versioned schema: snapshots and reports seen,
  check results, sizes over time, alerts, deliveries, login sessions.
* ``watch``   — one repository: poll (records, reports, sizes), audit-level
  check, and the conditions that alert.
* ``alerts``  — the alert engine: open, repeat after a delay, resolve.
* ``notify``  — delivery by SMTP and JSON webhook, retried and logged.
* ``service`` — the scheduler (threads) tying these together.
* ``auth``    — Argon2id password hashes, sessions, CSRF, login rate limits.
* ``web``, ``metrics`` — the ASGI app (Starlette, Jinja2) and /metrics.

The monitor holds audit keys only (``config`` refuses any other role): it
can open snapshot records and the audit part of failure reports and verify
every blob's MAC, and can never decrypt a file or a file name.  Like the
rest of the library it never prints or reads the environment; it logs to
the ``rekkord.monitor`` logger.
"""
