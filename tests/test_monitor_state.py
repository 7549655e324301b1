"""The monitor's SQLite state: a versioned schema, kept across restarts,
refused when newer than this rekkord, and safe to delete."""

from __future__ import annotations

import sqlite3

import pytest

from rekkord.errors import ConfigError
from rekkord.monitor.state import MIGRATIONS, SCHEMA_VERSION, State


def test_a_new_file_gets_the_current_schema_and_keeps_what_was_written(tmp_path):
    path = str(tmp_path / "state" / "state.sqlite")
    st = State(path)
    assert st.version == SCHEMA_VERSION == max(MIGRATIONS)
    st.set_meta("hello", "world")
    st.repository("clinic")
    st.update_repository("clinic", bytes=123, objects=4)
    st.add_check("clinic", 1000.0, 1.5, "clean", snapshots=2, problems=[{"object": "blobs/ab/ab"}])
    st.close()
    st = State(path)
    assert st.get_meta("hello") == "world"
    assert st.repository("clinic")["bytes"] == 123
    assert st.last_check("clinic")["problems"] == [{"object": "blobs/ab/ab"}]
    assert (tmp_path / "state" / "state.sqlite").stat().st_mode & 0o777 == 0o600
    st.close()


def test_a_newer_schema_is_refused_with_a_clear_message(tmp_path):
    path = str(tmp_path / "state.sqlite")
    State(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(ConfigError, match=r"schema version 2, newer than this rekkord knows \(1\).*delete the file"):
        State(path)


def test_an_older_schema_is_upgraded_step_by_step(tmp_path, monkeypatch):
    from rekkord.monitor import state as sm

    path = str(tmp_path / "state.sqlite")
    State(path).close()  # version 1
    monkeypatch.setitem(sm.MIGRATIONS, 2, "ALTER TABLE checks ADD COLUMN level TEXT; "
                                          "CREATE TABLE extra (x INTEGER)")
    monkeypatch.setattr(sm, "SCHEMA_VERSION", 2)
    st = State(path)
    assert st.version == 2
    assert "level" in [r[1] for r in st.q("PRAGMA table_info(checks)")]
    st.close()


def test_a_failed_upgrade_changes_nothing(tmp_path, monkeypatch):
    from rekkord.monitor import state as sm

    path = str(tmp_path / "state.sqlite")
    State(path).close()
    monkeypatch.setitem(sm.MIGRATIONS, 2, "CREATE TABLE extra (x INTEGER); SELECT nonsense FROM nowhere")
    monkeypatch.setattr(sm, "SCHEMA_VERSION", 2)
    with pytest.raises(ConfigError):
        State(path)
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 1
    assert db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'extra'").fetchone()[0] == 0


def test_a_damaged_file_is_a_config_error_naming_the_fix(tmp_path):
    path = tmp_path / "state.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ConfigError, match="delete it to start afresh"):
        State(str(path))


def test_sessions_expire_and_end(tmp_path):
    st = State(None)
    st.add_session("h1", "alice", "csrf1", 3600)
    st.add_session("h2", "bob", "csrf2", -1)
    assert st.session("h1")["user"] == "alice" and st.session("h2") is None
    st.end_session("h1")
    assert st.session("h1") is None
