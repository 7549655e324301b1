"""End-to-end: a write key saves an awkward tree, the master key restores it identically."""

import os

from treeutil import assert_same_tree, make_awkward_tree


def test_write_key_saves_master_restores(local_repo, run_cli, tmp_path):
    src = tmp_path / "src"
    make_awkward_tree(src)
    env = {"REKKORD_REPOSITORY": local_repo.url}
    run_cli("-k", local_repo.key_files["write"], "save", "c1", src, env=env, check=0)
    p = run_cli("-k", local_repo.key_files["write"], "snapshots", env=env)
    assert p.returncode == 5 and b"write key cannot" in p.stderr
    run_cli("-k", local_repo.key_files["admin"], "restore", f"c1:{src}", tmp_path / "out", env=env, check=0)
    assert_same_tree(src, tmp_path / "out")
    st = os.stat(tmp_path / "out" / "sparse.img")
    assert st.st_blocks * 512 < 4 * 1024 * 1024  # holes stay holes
