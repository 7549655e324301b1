"""The user guides cannot rot: every ```sh block of docs/guide-*.md runs, in
order, in one bash session (so variables carry over), with `set -euo
pipefail`, in an empty scratch directory, with the real CLI on PATH.

Convention (stated in each guide): ```sh blocks are commands and are run;
anything shown but not run uses another fence (```text, ```ini, ```toml).  A
```text/```console block may not contain a `rekkord` command line — such a
command would escape the test."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GUIDES = sorted((ROOT / "docs").glob("guide-*.md"))
FENCE = re.compile(r"^```([a-z]*)\n(.*?)^```\s*$", re.M | re.S)


def blocks(path: Path) -> list[tuple[str, int, str]]:
    text = path.read_text()
    out = []
    for m in FENCE.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        out.append((m.group(1), line, m.group(2)))
    return out


def test_there_are_guides_for_each_user():
    names = {g.name for g in GUIDES}
    assert {"guide-sysadmin.md", "guide-restore.md", "guide-audit.md"} <= names


@pytest.mark.parametrize("guide", GUIDES, ids=lambda p: p.name)
def test_no_untested_commands(guide):
    for lang, line, body in blocks(guide):
        if lang == "sh":
            continue
        for cmd in body.splitlines():
            assert not re.match(r"\s*(\$\s*)?rekkord\s", cmd), \
                f"{guide.name}:{line}: a rekkord command in a ```{lang} block is never run; use ```sh"


def script_for(guide: Path) -> str:
    parts = ["set -euo pipefail"]
    n = 0
    for lang, line, body in blocks(guide):
        if lang != "sh":
            continue
        n += 1
        parts.append(f"echo '>>> {guide.name}:{line}' >&2")
        parts.append(body)
    assert n, f"{guide.name} has no ```sh block"
    return "\n".join(parts) + "\n"


@pytest.mark.slow
@pytest.mark.parametrize("guide", GUIDES, ids=lambda p: p.name)
def test_guide_runs(guide, tmp_path):
    if "mount" in guide.read_text() and (os.geteuid() != 0 or not os.path.exists("/dev/fuse")):
        pytest.skip("the guide mounts a FUSE file system: needs root and /dev/fuse")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    wrapper = bindir / "rekkord"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} -m rekkord \"$@\"\n")
    wrapper.chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("REKKORD_") and k != "NO_COLOR"}
    env.update(PATH=f"{bindir}:{env.get('PATH', '/usr/bin:/bin')}", HOME=str(tmp_path / "home"),
               PYTHONPATH=str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""),
               LC_ALL="C.UTF-8")
    os.makedirs(env["HOME"])
    script = script_for(guide)
    (tmp_path / "script.sh").write_text(script)
    try:
        p = subprocess.run(["bash", str(tmp_path / "script.sh")], cwd=work, env=env, capture_output=True,
                           timeout=600, stdin=subprocess.DEVNULL)
    finally:
        for line in open("/proc/mounts"):  # never leave a mount behind, whatever happened
            mp = line.split()[1]
            if mp.startswith(str(tmp_path)):
                subprocess.run(["fusermount3", "-u", "-z", mp])
    err = p.stderr.decode(errors="replace")
    where = [x for x in err.splitlines() if x.startswith(">>> ")]
    assert p.returncode == 0, (f"{guide.name}: the block at {where[-1][4:] if where else '?'} failed "
                               f"(exit {p.returncode})\n--- stdout\n{p.stdout.decode(errors='replace')[-3000:]}"
                               f"\n--- stderr\n{err[-3000:]}")
    assert "Traceback" not in err
