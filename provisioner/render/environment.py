"""The one Jinja environment of provisioner, and BootContext: what a boot template sees.

Rules of this file: it is the only module that imports jinja2. Templates come from files only
(a site directory first, then the shipped `templates/`); node data reaches them only as
variables, never as template source. The environment is sandboxed (`SandboxedEnvironment`) with
`StrictUndefined`, so a missing variable is an error instead of an empty string, and autoescape
is off (iPXE scripts, shell and kickstarts are not HTML). `trim_blocks` and `lstrip_blocks` are
on, so `{% ... %}` lines leave no blank lines behind.

A failed render raises RenderError "TEMPLATE:LINE: what (node NAME)"; no state is kept between
renders, so one node's bad data fails that node only.

File modes: a template whose first line is a Jinja comment `{#- mode: 0755 -#}` renders to a
file with that mode (octal); every other file is 0644. The comment renders to nothing.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, NamedTuple

import jinja2
import jinja2.exceptions
import jinja2.meta
import jinja2.sandbox

import provisioner
from provisioner.errors import RenderError, TemplateNotFound

# The context types live in their own module to keep this one small; re-exported here because
# the contract names them as render's.
from provisioner.render.context import BootContext, Network, SchedulerTarget

__all__ = ["SHIPPED", "BootContext", "Network", "RenderedFile", "Renderer", "SchedulerTarget"]

SHIPPED: Final = Path(provisioner.__file__).resolve().parent.parent / "templates"
DEFAULT_MODE: Final = 0o644
_MODE_LINE: Final = re.compile(r"\{#-?\s*mode:\s*(0?[0-7]{3,4})\s*-?#\}")


class RenderedFile(NamedTuple):
    """One rendered file of a tree: its text and its permission bits."""

    text: str
    mode: int


def shquote(value: object) -> str:
    """Quote a value for POSIX sh (`'it'"'"'s'`), so node data stays one word, never code."""
    return shlex.quote(str(value))


def oneline(value: object) -> str:
    """Refuse line breaks in a value that lands on one line of an iPXE or config file."""
    text = str(value)
    if any(c in text for c in "\r\n\0"):
        raise ValueError(f"value {text[:40]!r} contains a line break; it must be one line")
    return text


def mode_of(source: str) -> int:
    """The permission bits a template asks for on its first line, else 0644."""
    first = source.split("\n", 1)[0]
    match = _MODE_LINE.match(first.strip())
    return int(match.group(1), 8) if match else DEFAULT_MODE


class Renderer:
    """Renders templates from `site_dir` (if any) then the shipped templates directory."""

    def __init__(self, site_dir: Path | None = None, *, shipped: Path = SHIPPED) -> None:
        self.search_path: tuple[Path, ...] = (
            (site_dir, shipped) if site_dir is not None else (shipped,))
        self.env = jinja2.sandbox.SandboxedEnvironment(
            loader=jinja2.FileSystemLoader([str(p) for p in self.search_path]),
            undefined=jinja2.StrictUndefined,
            autoescape=False,
            keep_trailing_newline=True,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters["shquote"] = shquote
        self.env.filters["oneline"] = oneline

    @classmethod
    def from_settings(cls, templates: str) -> Renderer:
        """From `[images] templates` (empty: no site directory)."""
        return cls(Path(templates) if templates else None)

    def render(self, template: str, variables: Mapping[str, Any], *, node: str = "-") -> str:
        """Render one template; TemplateNotFound or RenderError names template, line and node."""
        try:
            return self.env.get_template(template).render(dict(variables))
        except jinja2.TemplateNotFound as exc:
            missing = exc.name if isinstance(exc.name, str) else template
            where = ", ".join(str(p) for p in self.search_path)
            raise TemplateNotFound(
                f"{missing}: no such template in {where} (node {node})") from None
        except jinja2.TemplateSyntaxError as exc:
            raise RenderError(
                f"{exc.name or template}:{exc.lineno}: syntax error: {exc.message} "
                f"(node {node})") from None
        except Exception as exc:  # any failure inside a template fails this node only
            name, line = self._where(exc, template)
            raise RenderError(f"{name}:{line}: {_describe(exc)} (node {node})") from exc

    def render_tree(self, prefix: str, variables: Mapping[str, Any], *,
                    node: str = "-") -> dict[str, RenderedFile]:
        """Render every file under `prefix` (e.g. "overlay/"); a site file overrides the shipped
        file of the same relative path. Keys are relative to the prefix with `.j2` stripped."""
        out: dict[str, RenderedFile] = {}
        skip = len(prefix.strip("/")) + 1
        for name in self.templates_under(prefix):
            rel = name[skip:]
            path = rel[:-3] if rel.endswith(".j2") else rel
            out[path] = RenderedFile(self.render(name, variables, node=node), self.mode(name))
        return out

    def templates_under(self, prefix: str) -> list[str]:
        """Template names under `prefix` across the search path, sorted, site first wins."""
        top = prefix.strip("/")
        names: set[str] = set()
        for root in self.search_path:
            base = root / top
            if base.is_dir():
                names.update(f"{top}/{p.relative_to(base).as_posix()}"
                             for p in base.rglob("*") if p.is_file())
        return sorted(names)

    def source(self, template: str) -> str:
        """The source text of a template as found on the search path."""
        try:
            text, _, _ = self.env.loader.get_source(self.env, template)  # type: ignore[union-attr]
        except jinja2.TemplateNotFound:
            raise TemplateNotFound(f"{template}: no such template in "
                                   f"{', '.join(str(p) for p in self.search_path)}") from None
        return text

    def mode(self, template: str) -> int:
        """Permission bits of the file a template renders to (see the module docstring)."""
        return mode_of(self.source(template))

    def digest(self, prefix_or_template: str) -> str:
        """sha256 of the sources involved: every file under a prefix ending in '/', or one
        template and the templates it includes/imports by constant name."""
        if prefix_or_template.endswith("/"):
            names = self.templates_under(prefix_or_template)
        else:
            names = sorted(self._closure(prefix_or_template))
        digest = hashlib.sha256()
        for name in names:
            digest.update(name.encode() + b"\0" + self.source(name).encode() + b"\0")
        return digest.hexdigest()

    def _closure(self, template: str) -> set[str]:
        seen: set[str] = set()
        todo = [template]
        while todo and len(seen) < 256:  # bounded: include cycles are errors in Jinja anyway
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            try:
                parsed = self.env.parse(self.source(name))
            except jinja2.TemplateSyntaxError:
                continue
            todo += [n for n in jinja2.meta.find_referenced_templates(parsed) if n]
        return seen

    def _where(self, exc: BaseException, template: str) -> tuple[str, int | str]:
        """The innermost template frame of a render traceback: (template name, line)."""
        # Jinja names frames by searchpath + template name, unresolved: match both forms.
        roots = [r + "/" for p in self.search_path
                 for r in {os.path.normpath(p), str(p.resolve())}]
        found: tuple[str, int | str] = (template, "?")
        tb: types.TracebackType | None = exc.__traceback__
        while tb is not None:
            filename = tb.tb_frame.f_code.co_filename
            for root in roots:
                if filename.startswith(root):
                    found = (filename[len(root):], tb.tb_lineno)
            tb = tb.tb_next
        return found


def _describe(exc: BaseException) -> str:
    if isinstance(exc, jinja2.UndefinedError):
        return f"undefined variable: {exc.message}"
    if isinstance(exc, jinja2.exceptions.SecurityError):
        return f"refused by the sandbox: {exc}"
    return f"{type(exc).__name__}: {exc}"

