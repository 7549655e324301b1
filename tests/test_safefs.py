"""rekkord.safefs: operations below DEST through directory descriptors that
never follow a symlink (the restore's protection against what DEST already
holds and against a local user swapping things while it runs)."""

import errno
import os

import pytest

from rekkord import safefs


@pytest.fixture
def root(tmp_path):
    (tmp_path / "dest" / "d").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_bytes(b"s")
    os.symlink(tmp_path / "outside", tmp_path / "dest" / "link")
    os.symlink(tmp_path / "outside" / "secret", tmp_path / "dest" / "d" / "flink")
    fd = safefs.open_root(os.fsencode(tmp_path / "dest"))
    yield fd, tmp_path
    os.close(fd)


def test_a_symlink_is_never_a_directory_on_the_way(root):
    fd, tmp = root
    for comps in ([b"link"], [b"d", b"flink"], [b"link", b"secret"]):
        with pytest.raises(OSError) as e:
            safefs.open_path(fd, comps)
        assert e.value.errno in (errno.ELOOP, errno.ENOTDIR)
    sub = safefs.open_path(fd, [b"d"])
    os.close(sub)


def test_create_never_opens_an_existing_name_or_a_symlink(root):
    fd, tmp = root
    d = safefs.open_path(fd, [b"d"])
    try:
        with pytest.raises(FileExistsError):
            safefs.create(d, b"flink")
        assert (tmp / "outside" / "secret").read_bytes() == b"s"
        nfd = safefs.create(d, b"new")
        os.close(nfd)
        assert oct(os.stat(tmp / "dest" / "d" / "new").st_mode & 0o777) == "0o600"
        # Renaming over a symlink replaces the link, not its target.
        safefs.rename(d, b"new", b"flink")
        assert not os.path.islink(tmp / "dest" / "d" / "flink")
        assert (tmp / "outside" / "secret").read_bytes() == b"s"
    finally:
        os.close(d)


@pytest.mark.parametrize("name", [b"", b".", b"..", b"a/b", b"x\0"])
def test_names_are_single_components(root, name):
    fd, _ = root
    for op in (lambda: safefs.create(fd, name), lambda: safefs.open_dir(fd, name), lambda: safefs.lstat(fd, name),
               lambda: safefs.unlink(fd, name), lambda: safefs.rename(fd, b"d", name)):
        with pytest.raises(OSError):
            op()


def test_remove_tree_and_unlink_do_not_follow(root):
    fd, tmp = root
    (tmp / "dest" / "t" / "u").mkdir(parents=True)
    os.symlink(tmp / "outside", tmp / "dest" / "t" / "u" / "l")
    safefs.remove_tree(fd, b"t")
    safefs.unlink(fd, b"link")
    assert os.listdir(tmp / "dest") == ["d"] and (tmp / "outside" / "secret").read_bytes() == b"s"


def test_node_refuses_a_symlink_in_place_of_a_fifo(root):
    fd, tmp = root
    os.mkfifo(b"fifo", dir_fd=fd)
    with safefs.node(fd, b"fifo") as path:
        os.chmod(path, 0o640)
    assert oct(os.stat(tmp / "dest" / "fifo").st_mode & 0o777) == "0o640"
    with pytest.raises(OSError):
        safefs.node(fd, b"link")


def test_the_registry_bounds_open_directories(root):
    fd, _ = root
    reg = safefs.DirRegistry(limit=4)
    hs = [reg.handle(os.dup(fd)) for _ in range(3)]
    assert reg.open == 3
    h = hs[0].acquire()
    hs[0].release()
    assert reg.open == 3
    h.release()
    for x in hs[1:]:
        x.release()
    reg.wait_below(0)
    assert reg.open == 0


@pytest.mark.skipif(not safefs.unnamed_supported(), reason="needs O_TMPFILE and /proc")
def test_an_unnamed_file_gets_its_name_only_when_linked_and_never_through_a_symlink(root):
    fd, tmp = root
    d = safefs.open_path(fd, [b"d"])
    try:
        f = safefs.create_unnamed(d, 0o640)
        try:
            os.write(f, b"content")
            assert sorted(os.listdir(tmp / "dest" / "d")) == ["flink"]  # nothing visible yet
            with pytest.raises(FileExistsError):  # a symlink in the way is not followed
                safefs.link_unnamed(f, d, b"flink")
            assert (tmp / "outside" / "secret").read_bytes() == b"s"
            with pytest.raises(OSError):
                safefs.link_unnamed(f, d, b"../escape")
            safefs.link_unnamed(f, d, b"new")
        finally:
            os.close(f)
        assert (tmp / "dest" / "d" / "new").read_bytes() == b"content"
        assert not (tmp / "escape").exists()
        # A file closed without a name is gone.
        os.close(safefs.create_unnamed(d, 0o600))
        assert sorted(os.listdir(tmp / "dest" / "d")) == ["flink", "new"]
    finally:
        os.close(d)


def test_umask_is_read_without_changing_it():
    old = os.umask(0o027)
    try:
        assert safefs.umask() == 0o027
        assert os.umask(0o027) == 0o027
    finally:
        os.umask(old)


def test_a_default_acl_is_noticed(root, tmp_path):
    fd, tmp = root
    d = safefs.open_path(fd, [b"d"])
    try:
        assert not safefs.has_default_acl(d)
        if os.system(f"setfacl -d -m u::rwx,g::---,o::--- {tmp / 'dest' / 'd'} 2>/dev/null") == 0:
            assert safefs.has_default_acl(d)
    finally:
        os.close(d)
