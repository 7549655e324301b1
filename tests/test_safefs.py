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
