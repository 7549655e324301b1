"""Install hints work from a clone and from the package index: every
`pip install 'rekkord[EXTRA]'` in the code and the docs comes with
`pip install '.[EXTRA]'`, and the other way round; extras named exist in
pyproject.toml (or are announced, like [monitor])."""

from __future__ import annotations

import os
import re
import sys
import tomllib

import pytest

from rekkord.extras import EXTRAS, install_hint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sources():
    for d, _, files in os.walk(os.path.join(ROOT, "rekkord")):
        for f in files:
            if f.endswith(".py"):
                yield os.path.join(d, f)
    yield os.path.join(ROOT, "README.md")
    for f in os.listdir(os.path.join(ROOT, "docs")):
        if f.endswith(".md"):
            yield os.path.join(ROOT, "docs", f)


def test_every_install_hint_gives_both_commands():
    found = 0
    for path in sources():
        text = open(path, encoding="utf-8").read()
        for para in re.split(r"\n\s*\n", text):
            flat = " ".join(para.split())
            index_form = set(re.findall(r"rekkord\[(\w+|\{extra\})\]", flat))
            clone_form = set(re.findall(r"'\.\[(\w+|\{extra\})\]'", flat))
            found += len(index_form)
            assert index_form == clone_form, (os.path.relpath(path, ROOT), flat[:300])
    assert found >= 3


def test_extras_exist_or_are_announced():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        declared = set(tomllib.load(f)["project"]["optional-dependencies"])
    assert "mount" in declared and set(EXTRAS) - declared <= {"monitor"}
    assert install_hint("mount") == "pip install 'rekkord[mount]' (in a clone of the source: pip install '.[mount]')"


def test_the_mount_error_names_both_commands(monkeypatch):
    from rekkord.errors import RekkordError
    from rekkord.mount import _import_fuse

    monkeypatch.setitem(sys.modules, "mfusepy", None)  # as if it were not installed
    with pytest.raises(RekkordError) as e:
        _import_fuse()
    assert "pip install 'rekkord[mount]'" in str(e.value) and "pip install '.[mount]'" in str(e.value)
