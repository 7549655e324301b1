"""benchmarks/run.py's own nights (--nightly-dir): the order of the nights,
and the working tree moved from one night to the next; and how benchmarks/profiles.py
sorts the samples of a profile."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location("bench_run", ROOT / "benchmarks" / "run.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod  # (its dataclasses look their module up)
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop("bench_run", None)
        sys.path.remove(str(ROOT / "benchmarks"))


def test_nights_are_taken_in_natural_order_and_synced_one_after_the_other(run, tmp_path):
    src = tmp_path / "nights"
    for name, files in {"day1": {"a": b"1", "keep": b"k"}, "day2": {"a": b"22", "b": b"new", "keep": b"k"},
                        "day10": {"b": b"new", "keep": b"k"}}.items():
        (src / name / "sub").mkdir(parents=True)
        for f, data in files.items():
            (src / name / "sub" / f).write_bytes(data)
    (src / "not-a-night.txt").write_text("files beside the nights are ignored")
    ds = run.NightsFromDirDataset(tmp_path / "work", src)
    assert ds.states == ["day1", "day2", "day10"]
    assert ds.ops == ("night1", "night2", "night3", "restore")
    ds.prepare()
    tree = ds.tree / "sub"
    assert {p.name: p.read_bytes() for p in tree.iterdir()} == {"a": b"1", "keep": b"k"}
    kept = (tree / "keep").stat().st_ino
    ds.ensure_state(ds.state_for("night2"))
    assert {p.name: p.read_bytes() for p in tree.iterdir()} == {"a": b"22", "b": b"new", "keep": b"k"}
    ds.ensure_state(ds.state_for("restore"))  # the last night
    assert {p.name: p.read_bytes() for p in tree.iterdir()} == {"b": b"new", "keep": b"k"}
    assert (tree / "keep").stat().st_ino == kept  # unchanged files are left alone
    assert ds.ready() and ds.info["states"]["night3"]["files"] == 2


def test_a_dir_with_fewer_than_two_nights_is_refused(run, tmp_path):
    (tmp_path / "only").mkdir()
    with pytest.raises(SystemExit, match="two or more"):
        run.NightsFromDirDataset(tmp_path / "work", tmp_path)
    with pytest.raises(SystemExit, match="NAME=V1,V2"):
        run.NightlyDataset(tmp_path / "work", "Django=5.0.1")


def _kdamond(root: Path, state: str, aggr_us: int, schemes: list[tuple[str, int]]) -> None:
    ctx = root / "0" / "contexts" / "0"
    (ctx / "monitoring_attrs" / "intervals").mkdir(parents=True)
    (root / "0" / "state").write_text(state + "\n")
    (ctx / "monitoring_attrs" / "intervals" / "aggr_us").write_text(f"{aggr_us}\n")
    for i, (action, age) in enumerate(schemes):
        sc = ctx / "schemes" / str(i)
        (sc / "access_pattern" / "age").mkdir(parents=True)
        (sc / "action").write_text(action + "\n")
        (sc / "access_pattern" / "age" / "min").write_text(f"{age}\n")


def test_the_report_names_a_kernel_that_pages_out_idle_memory(run, tmp_path):
    """The machine section says when the page cache does not stay warm
    (DAMON's pageout: what had made repositories cold between operations)."""
    on = tmp_path / "on"
    _kdamond(on, "on", 5_000_000, [("stat", 1), ("pageout", 12)])
    assert run.damon_reclaim(on) == "DAMON pages out memory idle for 60 s or more"
    off = tmp_path / "off"
    _kdamond(off, "off", 5_000_000, [("pageout", 12)])
    assert run.damon_reclaim(off) == ""
    assert run.damon_reclaim(tmp_path / "absent") == ""


def test_a_blocked_pipe_read_is_waiting_in_a_profile_and_a_write_is_kernel():
    spec = importlib.util.spec_from_file_location("bench_profiles", ROOT / "benchmarks" / "profiles.py")
    profiles = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(profiles)
    base = ["Restorer.restore (rekkord/restore.py:441)"]
    kid = ["Restorer._read_kid (rekkord/restore.py:536)", "Connection._recv (multiprocessing/connection.py:395)"]
    assert profiles.classify([*base, *kid, "os_read (libpython3.11.so.1.0)", "0x7f2 (libc.so.6)"]) == "waiting"
    assert profiles.classify([*base, *kid, "read (libc.so.6)"]) == "waiting"
    assert profiles.classify([*base, "_recv (rekkord/readworker.py:150)", "read (libc.so.6)"]) == "waiting"
    assert profiles.classify([*base, "_pwrite_all (rekkord/restore.py:1768)", "pwrite64 (libc.so.6)"]) == "kernel"
