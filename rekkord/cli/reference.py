"""The CLI reference, generated from the click command tree: the part of
docs/cli.md between its GENERATED markers (``scripts/gen-cli-docs.py``;
``tests/test_cli_meta.py`` fails when it is out of date) and the man pages
(``rekkord man DIR``).  One walk of the tree serves both, so neither can
forget a command or an option."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import click

BEGIN = "<!-- BEGIN GENERATED (scripts/gen-cli-docs.py): do not edit by hand -->"
END = "<!-- END GENERATED -->"


@dataclass
class Node:
    path: tuple[str, ...]  # ("key", "derive")
    command: click.Command
    ctx: click.Context

    @property
    def name(self) -> str:
        return " ".join(("rekkord", *self.path))

    @property
    def usage(self) -> str:
        return f"{self.name} {' '.join(self.command.collect_usage_pieces(self.ctx))}".rstrip()

    def options(self) -> list[tuple[str, str]]:
        out = []
        for p in self.command.get_params(self.ctx):
            if p.name == "help" and self.path:
                continue  # every command has -h/--help
            rec = p.get_help_record(self.ctx) if isinstance(p, click.Option) else None
            if rec is not None:
                out.append(rec)
        return out

    def paragraphs(self) -> list[tuple[bool, str]]:
        """(verbatim, text) paragraphs of the help text (``\\b`` marks verbatim ones)."""
        text = self.command.help or ""  # click has cleaned the docstring
        out = []
        for para in re.split(r"\n\s*\n", text):
            if not para.strip():
                continue
            if para.startswith("\b\n"):
                out.append((True, para[2:]))
            else:
                out.append((False, " ".join(line.strip() for line in para.splitlines())))
        return out

    @property
    def summary(self) -> str:
        return self.command.get_short_help_str(limit=200)


def walk(cli: click.Group) -> list[Node]:
    """Every visible command, depth first, groups before their commands."""
    root = click.Context(cli, info_name="rekkord", **cli.context_settings)
    out = [Node((), cli, root)]

    def visit(group: click.Group, ctx: click.Context, path):
        for name in group.list_commands(ctx):
            cmd = group.get_command(ctx, name)
            if cmd is None or cmd.hidden:
                continue
            sub = click.Context(cmd, info_name=name, parent=ctx)
            out.append(Node((*path, name), cmd, sub))
            if isinstance(cmd, click.Group):
                visit(cmd, sub, (*path, name))

    visit(cli, root, ())
    return out


# ---- markdown ---------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(cli: click.Group) -> str:
    from .config import CHANNEL_KEYS, SECTIONS, TOP_KEYS
    from .context import ENV

    nodes = walk(cli)
    lines = [BEGIN, "", "## Commands", ""]
    for n in nodes[1:]:
        anchor = "-".join(("rekkord", *n.path))
        lines.append(f"* [`{n.name}`](#{anchor}) — {n.summary}")
    lines += ["", "## Global options", "",
              "Accepted before the command and after it (`rekkord -q save …` or `rekkord save -q …`);",
              "a command's own option of the same name wins (`setup --repository`, `setup --log-file`).", "",
              "| Option | Description |", "|---|---|"]
    for decl, help_ in nodes[0].options():
        lines.append(f"| `{_cell(decl)}` | {_cell(help_)} |")
    lines += ["", "## Environment", "", "| Variable | Setting |", "|---|---|"]
    for name, env in sorted(ENV.items(), key=lambda kv: kv[1]):
        lines.append(f"| `{env}` | `{name}` |")
    lines += ["| `REKKORD_CONFIG` | the config file (`-c`) |",
              "| `REKKORD_NEW_PASSPHRASE` | the new passphrase for `key passwd` and `key derive` |", ""]
    lines += ["## Config file keys", "",
              "An unknown key at any level is an error that names the closest known key.", "",
              f"* top level: {', '.join(f'`{k}`' for k in sorted(TOP_KEYS))}"]
    for sec, spec in SECTIONS.items():
        if isinstance(spec, tuple):
            lines.append(f"* `[{sec}.NAME]`: {', '.join(f'`{k}`' for k in sorted(spec[1]))}")
        else:
            lines.append(f"* `[{sec}]`: {', '.join(f'`{k}`' for k in sorted(spec))}")
    assert CHANNEL_KEYS  # (listed through SECTIONS)
    lines.append("")
    for n in nodes[1:]:
        anchor = "-".join(("rekkord", *n.path))
        lines += [f'<a id="{anchor}"></a>', "", f"### {n.name}", "", "```text", f"Usage: {n.usage}", "```", ""]
        for verbatim, para in n.paragraphs():
            if verbatim:
                lines += ["```text", para, "```", ""]
            else:
                lines += [para, ""]
        if isinstance(n.command, click.Group):
            lines += ["Commands: " + ", ".join(f"`{n.name} {c}`" for c in n.command.list_commands(n.ctx)), ""]
        opts = n.options()
        if opts:
            lines += ["| Option | Description |", "|---|---|"]
            lines += [f"| `{_cell(d)}` | {_cell(h)} |" for d, h in opts]
            lines.append("")
    lines.append(END)
    return "\n".join(lines) + "\n"


def update_markdown(text: str, cli: click.Group) -> str:
    """``text`` (docs/cli.md) with its generated part replaced."""
    if BEGIN not in text or END not in text:
        raise ValueError("docs/cli.md lacks the GENERATED markers")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return head + markdown(cli).rstrip("\n") + tail


# ---- roff ---------------------------------------------------------------------


def _roff(text: str) -> str:
    text = text.replace("\\", "\\e").replace("-", "\\-")
    text = "".join(c if ord(c) < 128 else f"\\[u{ord(c):04X}]" for c in text)  # groff's Unicode escapes
    return "\n".join(("\\&" + line) if line[:1] in (".", "'") else line for line in text.splitlines())


def man_pages(cli: click.Group) -> dict[str, str]:
    """File name -> roff source, one page per command (groups included)."""
    from .. import __version__

    nodes = walk(cli)
    date = time.strftime("%Y-%m-%d", time.gmtime())
    pages = {}
    for n in nodes:
        page = "-".join(("rekkord", *n.path))
        out = [f'.TH "{page.upper()}" 1 "{date}" "rekkord {__version__}" "rekkord manual"',
               ".SH NAME", f"{_roff(page)} \\- {_roff(n.summary)}", ".SH SYNOPSIS",
               f".B {_roff(n.name)}", _roff(n.usage[len(n.name):].strip()), ".SH DESCRIPTION"]
        for verbatim, para in n.paragraphs():
            if verbatim:
                out += [".PP", ".nf", _roff(para), ".fi"]
            else:
                out += [".PP", _roff(para)]
        if isinstance(n.command, click.Group):
            out.append(".SH COMMANDS")
            for c in n.command.list_commands(n.ctx):
                sub = n.command.get_command(n.ctx, c)
                if sub is None or sub.hidden:
                    continue
                out += [".TP", f".B {_roff(c)}", _roff(sub.get_short_help_str(limit=200))]
        opts = n.options()
        if opts:
            out.append(".SH OPTIONS" if n.path else ".SH GLOBAL OPTIONS")
            for decl, help_ in opts:
                out += [".TP", f".B {_roff(decl)}", _roff(help_)]
        if n.path:
            out += [".PP", "Global options (see \\fBrekkord\\fR(1)) may also be given after the command."]
        out += [".SH SEE ALSO"]
        if n.path:
            parent = "-".join(("rekkord", *n.path[:-1]))
            out.append(f"\\fB{_roff(parent)}\\fR(1), docs/cli.md")
        else:
            out.append(", ".join(f"\\fB{_roff('-'.join(('rekkord', *m.path)))}\\fR(1)" for m in nodes[1:]))
        pages[f"{page}.1"] = "\n".join(out) + "\n"
    return pages
