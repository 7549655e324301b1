"""rekkord version, completion and man, and docs/cli.md kept in step with
the command tree (scripts/gen-cli-docs.py)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_version_names_formats_python_and_dependencies(run_cli):
    from rekkord import __version__
    from rekkord.cli.meta import DEPENDENCIES, OPTIONAL
    from rekkord.repository import FORMAT_VERSION, SUPPORTED_FORMATS

    out = run_cli("version", check=0).stdout.decode()
    assert out.startswith(f"rekkord {__version__}\n")
    assert f"repository formats: reads {', '.join(map(str, SUPPORTED_FORMATS))}; writes {FORMAT_VERSION}" in out
    assert "python 3." in out and "pynacl " in out and "boto3 " in out
    info = json.loads(run_cli("version", "--json", check=0).stdout)
    assert info["repository_formats"]["supported"] == list(SUPPORTED_FORMATS)
    assert info["python"]["version"].startswith("3.")
    assert all(info["dependencies"][d] for d in DEPENDENCIES)
    # The list is pyproject.toml's, extras included.
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    names = {re.split(r"[<>=\[ ;]", d, 1)[0].lower() for d in project["dependencies"]}
    assert names == set(DEPENDENCIES)
    for dist, extra in OPTIONAL.items():
        assert any(d.startswith(dist) for d in project["optional-dependencies"][extra])
    # --json given globally works too.
    assert json.loads(run_cli("--json", "version", check=0).stdout) == info


def test_bash_completion_completes_commands_options_and_choices(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "rekkord").write_text(f"#!/bin/sh\nexec {sys.executable} -m rekkord \"$@\"\n")
    (bindir / "rekkord").chmod(0o755)
    script = """
        source <(rekkord completion bash)
        ask() { COMPREPLY=(); COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _rekkord_completion rekkord;
                echo "${COMPREPLY[*]}"; }
        ask rekkord sa
        ask rekkord save --exclude-c
        ask rekkord completion ''
        ask rekkord key de
    """
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "PYTHONPATH": ROOT}
    p = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["save", "--exclude-caches", "bash zsh fish", "derive"]


@pytest.mark.parametrize("shell,needle", [("zsh", "compdef _rekkord_completion rekkord"),
                                          ("fish", "complete --no-files --command rekkord")])
def test_zsh_and_fish_completion_scripts(run_cli, shell, needle):
    out = run_cli("completion", shell, check=0).stdout.decode()
    assert needle in out and "_REKKORD_COMPLETE" in out


def test_man_pages_generate_for_every_command(run_cli, tmp_path):
    from rekkord.cli.main import cli
    from rekkord.cli.reference import walk

    run_cli("man", tmp_path / "man", check=0)
    pages = sorted(os.listdir(tmp_path / "man"))
    expected = sorted("-".join(("rekkord", *n.path)) + ".1" for n in walk(cli))
    assert pages == expected and "rekkord-key-derive.1" in pages and "rekkord-save.1" in pages
    save = (tmp_path / "man" / "rekkord-save.1").read_text()
    assert save.startswith('.TH "REKKORD-SAVE" 1 ') and ".SH OPTIONS" in save
    assert "\\-\\-exclude\\-caches" in save
    assert ".SH GLOBAL OPTIONS" in (tmp_path / "man" / "rekkord.1").read_text()
    if shutil.which("groff"):  # the roff is well-formed: groff renders it without a warning
        for name in pages:
            p = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(tmp_path / "man" / name)],
                               capture_output=True, text=True)
            assert p.returncode == 0 and p.stderr == "", (name, p.stderr)
        text = subprocess.run(["groff", "-man", "-Tutf8", str(tmp_path / "man" / "rekkord-save.1")],
                              capture_output=True, text=True, env={**os.environ, "LC_ALL": "C.UTF-8"}).stdout
        assert "--exclude-caches" in re.sub(r".\x08", "", text)


def test_docs_cli_md_is_generated_from_the_command_tree():
    p = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "gen-cli-docs.py"), "--check"],
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT})
    assert p.returncode == 0, p.stderr
    text = open(os.path.join(ROOT, "docs", "cli.md")).read()
    from rekkord.cli.main import cli
    from rekkord.cli.reference import walk

    for n in walk(cli)[1:]:
        assert f"### {n.name}\n" in text
        for decl, _ in n.options():
            assert f"`{decl.replace('|', chr(92) + '|')}`" in text, (n.name, decl)
