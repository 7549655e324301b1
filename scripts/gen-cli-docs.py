#!/usr/bin/env python3
"""Regenerate the command reference in docs/cli.md from the click command tree.

    python3 scripts/gen-cli-docs.py          # rewrite docs/cli.md
    python3 scripts/gen-cli-docs.py --check  # exit 1 when docs/cli.md is out of date

Only the part between the GENERATED markers is rewritten; the text around it
is written by hand. tests/test_cli_meta.py runs the check."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from rekkord.cli.main import cli  # noqa: E402
from rekkord.cli.reference import update_markdown  # noqa: E402

PATH = os.path.join(ROOT, "docs", "cli.md")


def main(argv):
    with open(PATH, encoding="utf-8") as f:
        old = f.read()
    new = update_markdown(old, cli)
    if "--check" in argv:
        if new != old:
            print("docs/cli.md is out of date: run python3 scripts/gen-cli-docs.py", file=sys.stderr)
            return 1
        return 0
    if new != old:
        with open(PATH, "w", encoding="utf-8") as f:
            f.write(new)
        print("docs/cli.md updated")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
