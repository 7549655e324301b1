"""rekkord copy and init --from-repo through the real CLI: a local v1
repository copied to a v2 one with only a write key, resumed, restored."""

import json
import os

from treeutil import assert_same_tree, make_awkward_tree


def test_copy_a_v1_repository_into_a_new_v2_one(run_cli, tmp_path):
    src = tmp_path / "src"
    make_awkward_tree(src, big=1 << 20)
    old, new = tmp_path / "old", tmp_path / "new"
    e_old = {"REKKORD_REPOSITORY": str(old), "REKKORD_KEY_FILE": str(tmp_path / "old.key")}
    run_cli("init", "--format", "1", env=e_old, check=0)
    run_cli("save", "etc", src, "--host", "web01", "--tag", "t1", env=e_old, check=0)
    e_new = {"REKKORD_REPOSITORY": str(new), "REKKORD_KEY_FILE": str(tmp_path / "new.key")}
    run_cli("init", "--from-repo", old, "--from-key", tmp_path / "old.key", env=e_new, check=0)
    run_cli("key", "derive", "--role", "write", "--label", "copier", "--output", tmp_path / "w.key", env=e_new,
            check=0)
    w = {**e_new, "REKKORD_KEY_FILE": str(tmp_path / "w.key")}
    p = run_cli("copy", "--from-repo", old, "--from-key", tmp_path / "old.key", "--json", env=w, check=0)
    report = json.loads(p.stdout)
    assert len(report["copied"]) == 1 and report["failed"] == []
    p = run_cli("copy", "--from-repo", old, "--from-key", tmp_path / "old.key", env=w, check=0)
    assert b"0 snapshots copied, 1 already there" in p.stderr + p.stdout
    snaps = json.loads(run_cli("snapshots", "--json", env=e_new, check=0).stdout)
    assert [(s["channel"], s["host"], s["tags"]) for s in snaps] == [("etc", "web01", ["t1"])]
    run_cli("restore", "etc", tmp_path / "out", env=e_new, check=0)
    assert_same_tree(src, tmp_path / "out" / str(src).lstrip("/"))
    run_cli("check", "--read-data", env=e_new, check=0)
    config = json.loads(open(os.path.join(new, "config")).read())["body"]
    assert config["format"] == 2 and "shared" in config["chunker"]
