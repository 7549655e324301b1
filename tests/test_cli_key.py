"""rekkord key and the passphrase options: --passphrase-file / --passphrase-command
(flags, environment, config file), the new passphrase of key passwd and key
derive, key info without the passphrase, and the key file permission warning."""

from __future__ import annotations

import json
import os
import sys

import pytest

from rekkord import keys as keymod


@pytest.fixture
def protected(local_repo, tmp_path):
    """The full key, protected with the passphrase 'pw'."""
    path = tmp_path / "full-pw.key"
    local_repo.keys["full"].save(str(path), "pw")
    return path


def command_printing(text: str) -> str:
    return f"{sys.executable} -c \"print({text!r})\""


def one_error(p, code, *needles):
    err = p.stderr.decode()
    assert p.returncode == code, (p.returncode, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rekkord: error: "), lines
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_passphrase_from_a_file_a_command_the_environment_or_the_config(local_repo, run_cli, protected, tmp_path):
    pwfile = tmp_path / "pw.txt"
    pwfile.write_text("  pw\n")  # surrounding white space is dropped, as restic does
    base = ("-r", local_repo.url, "-k", protected)
    run_cli(*base, "--passphrase-file", pwfile, "snapshots", check=0)
    run_cli(*base, "snapshots", "--passphrase-file", pwfile, check=0)  # after the command too
    run_cli(*base, "--passphrase-command", command_printing("pw"), "snapshots", check=0)
    run_cli(*base, "snapshots", env={"REKKORD_PASSPHRASE_FILE": str(pwfile)}, check=0)
    run_cli(*base, "snapshots", env={"REKKORD_PASSPHRASE_COMMAND": command_printing("pw")}, check=0)
    conf = tmp_path / "c.toml"
    conf.write_text(f'repository = "{local_repo.url}"\nkey_file = "{protected}"\npassphrase_file = "{pwfile}"\n')
    run_cli("-c", conf, "snapshots", check=0)
    # A flag beats the environment, which beats the config file.
    bad = tmp_path / "bad.txt"
    bad.write_text("wrong")
    run_cli("-c", conf, "--passphrase-file", pwfile, "snapshots", env={"REKKORD_PASSPHRASE_FILE": str(bad)},
            check=0)
    one_error(run_cli("-c", conf, "snapshots", env={"REKKORD_PASSPHRASE_FILE": str(bad)}), 5, "wrong passphrase")
    run_cli("-c", conf, "snapshots", env={"REKKORD_PASSPHRASE": "wrong"}, check=5)


def test_bad_passphrase_sources_are_one_clear_line(local_repo, run_cli, protected, tmp_path):
    base = ("-r", local_repo.url, "-k", protected)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    one_error(run_cli(*base, "--passphrase-file", tmp_path / "missing", "snapshots"), 5, "does not exist")
    one_error(run_cli(*base, "--passphrase-file", empty, "snapshots"), 5, "is empty")
    one_error(run_cli(*base, "--passphrase-command", f"{sys.executable} -c 'raise SystemExit(3)'", "snapshots"),
              5, "failed with exit code 3")
    one_error(run_cli(*base, "--passphrase-command", "/no/such/program", "snapshots"), 5, "cannot run")
    one_error(run_cli(*base, "--passphrase-file", empty, "--passphrase-command", "true", "snapshots"), 2,
              "exclude each other")


def test_key_passwd_and_derive_take_the_new_passphrase_from_elsewhere(local_repo, run_cli, protected, tmp_path):
    old = tmp_path / "old.txt"
    old.write_text("pw")
    new = tmp_path / "new.txt"
    new.write_text("new passphrase\n")
    run_cli("key", "passwd", protected, "--passphrase-file", old, "--new-passphrase-file", new, check=0)
    assert keymod.load(str(protected), "new passphrase").role == "full"
    run_cli("key", "passwd", protected, "--passphrase-file", new, "--new-passphrase-command",
            command_printing("third"), check=0)
    assert keymod.load(str(protected), "third").role == "full"
    run_cli("key", "passwd", protected, "--no-passphrase", env={"REKKORD_PASSPHRASE": "third"}, check=0)
    assert not keymod.is_protected(protected.read_text())
    assert sorted(os.listdir(tmp_path)).count("full-pw.key") == 1
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]  # no temporary left behind
    out = tmp_path / "web.key"
    run_cli("-r", local_repo.url, "-k", local_repo.key_files["admin"], "key", "derive", "--role", "write",
            "--label", "web", "-o", out, "--new-passphrase-file", new, check=0)
    assert keymod.load(str(out), "new passphrase").role == "write"


def test_key_info_shows_a_protected_keys_facts_without_the_passphrase(local_repo, run_cli, protected):
    k = local_repo.keys["full"]
    p = run_cli("key", "info", protected, check=0)  # no passphrase anywhere, no terminal
    out = p.stdout.decode()
    assert f"kid         {k.kid}" in out and "role        full" in out and local_repo.master.repo in out
    assert "verified    no" in out
    info = json.loads(run_cli("key", "info", "--verify", "--json", protected, env={"REKKORD_PASSPHRASE": "pw"},
                              check=0).stdout)
    assert info["verified"] is True and info["label"] == "test-full" and info["protection"] == "passphrase"
    # A tampered header shows (unverified) but fails once the passphrase is given.
    body = keymod.parse_armour(protected.read_text()).replace(b'"label":"test-full"', b'"label":"test-fool"')
    protected.write_text(f"{keymod.ARMOUR_BEGIN}\n{__import__('base64').b64encode(body).decode()}\n"
                         f"{keymod.ARMOUR_END}\n")
    assert json.loads(run_cli("key", "info", "--json", protected, check=0).stdout)["label"] == "test-fool"
    one_error(run_cli("key", "info", "--verify", protected, env={"REKKORD_PASSPHRASE": "pw"}), 5,
              "public header was altered")
    # The old protection has no public facts: info needs the passphrase.
    old = protected.parent / "old.key"  # a copy: a clone gives the fixture mode 0644 (and a warning)
    old.write_bytes(open(os.path.join(os.path.dirname(__file__), "fixtures", "keyfile-v1-argon2id-write.key"),
                         "rb").read())
    os.chmod(old, 0o600)
    one_error(run_cli("key", "info", old), 5, "passphrase")
    info = json.loads(run_cli("key", "info", "--json", old, env={"REKKORD_PASSPHRASE": "old horse"}, check=0).stdout)
    assert info["role"] == "write" and info["protection"] == "passphrase (old format)"


HOSTILE_LABEL = "web\x1b]0;owned\x07\x1b[2J\nrole        admin\r\u202e"


def test_key_info_and_list_print_a_hostile_label_escaped(local_repo, run_cli, tmp_path):
    """A key file's label is whatever its writer chose (and, for a protected
    file, read before any passphrase): terminal escapes, a newline that
    would forge a 'role admin' line, a bidi override -- all shown escaped,
    one line per fact; --json stays exact."""
    k = local_repo.master.derive("write", HOSTILE_LABEL)
    path = tmp_path / "hostile.key"
    k.save(str(path), "pw")
    for extra in ((), ("--verify",)):
        out = run_cli("key", "info", *extra, path, env={"REKKORD_PASSPHRASE": "pw"}, check=0).stdout.decode()
        lines = out.splitlines()
        assert "\x1b" not in out and "\r" not in out and "\u202e" not in out, out
        assert [ln.split()[0] for ln in lines] == ["file", "kid", "role", "label", "repository", "created",
                                                    "protection", "verified", "can"], lines
        assert "role        write" in lines and not any(ln.startswith("role        admin") for ln in lines)
        assert "label       web\\x1b]0;owned\\x07\\x1b[2J\\nrole        admin\\r\\u202e" in lines
    info = json.loads(run_cli("key", "info", "--json", path, check=0).stdout)
    assert info["label"] == HOSTILE_LABEL
    local_repo.repo().publish_cert(k.cert)
    out = run_cli("-r", local_repo.url, "-k", local_repo.key_files["admin"], "key", "list", check=0).stdout.decode()
    assert "\x1b" not in out and "\r" not in out and len(out.splitlines()) == 2 + 5  # 4 test keys and this one
    assert any(ln.startswith(k.kid) and "web\\x1b]0;owned" in ln for ln in out.splitlines())


def test_a_key_file_others_can_read_gives_a_warning(local_repo, run_cli, tmp_path):
    path = tmp_path / "loose.key"
    local_repo.keys["read"].save(str(path))
    os.chmod(path, 0o644)
    p = run_cli("-r", local_repo.url, "-k", path, "snapshots", check=0)
    err = p.stderr.decode().strip().splitlines()
    assert err == [f"rekkord: warning: key file {path} can be read or written by its group and others "
                   f"(mode 0644); restrict it with: chmod 600 {path}"]
    os.chmod(path, 0o600)
    assert run_cli("-r", local_repo.url, "-k", path, "snapshots", check=0).stderr == b""


def test_init_and_setup_protect_the_new_master_key_with_a_passphrase_file(run_cli, tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("from a file\n")
    run_cli("-r", tmp_path / "r1", "-k", tmp_path / "m1.key", "init", "--passphrase-file", pw, check=0)
    assert keymod.load(str(tmp_path / "m1.key"), "from a file").role == "admin"
    run_cli("setup", "--yes", "--repository", tmp_path / "r2", "--config-file", tmp_path / "c.toml",
            "--master-key", tmp_path / "m2.key", "--write-key", tmp_path / "w2.key", "--path", tmp_path,
            "--passphrase-file", pw, env={}, check=0)
    assert keymod.load(str(tmp_path / "m2.key"), "from a file").role == "admin"
