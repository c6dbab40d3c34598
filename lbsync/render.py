"""Render a Jinja2 template to text, and the fingerprint header of every file lbsync manages.

Jinja2 costs tens of milliseconds to import, and Serf runs handlers serially, so it is imported
only when something has to be rendered. A managed file's first line is
`# lbsync fingerprint=<inputs> body=<body>`: a digest of the template bytes and the render
context, and of the body. Equal inputs render equal bytes, so comparing the header tells whether
the live file is current without Jinja2; a hand-edited body no longer matches its digest, so it
is noticed and repaired. One Environment per template directory is kept for the life of the
process; it re-reads a template whose file changed (the daemon's hot reload).
"""

from __future__ import annotations

import hashlib
import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from .config import PACKAGE_TEMPLATES  # imports are looked up there after the template's own directory
from .errors import TemplateError

HEADER = "# lbsync fingerprint={inputs} body={body}\n"


def render(template: str | Path, context: dict[str, Any]) -> str:
    """Render `template` with `context`; any failure becomes a TemplateError naming file and line."""
    import jinja2

    path = Path(template)
    try:
        return _environment(str(path.parent)).get_template(path.name).render(context) + "\n"
    except jinja2.TemplateNotFound:
        raise TemplateError(f"template {path} does not exist") from None
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"template {exc.filename or path}:{exc.lineno}: {exc.message}") from None
    except jinja2.TemplateError as exc:
        raise TemplateError(f"template {path}: {exc}") from None


def fingerprint(template: str | Path, context: dict[str, Any]) -> str:
    """A digest of everything a render depends on, computed without importing Jinja2.

    Equal fingerprints mean equal output, so the unchanged path can stop before rendering. The
    templates it imports or includes (same directory) count as part of it.
    """
    path = Path(template)
    source = _read(path)
    digest = hashlib.sha256(source)
    for name in sorted(set(IMPORTS.findall(source))):
        imported = path.with_name(name.decode())
        digest.update(_read(imported if imported.exists() else PACKAGE_TEMPLATES / imported.name))
    digest.update(json.dumps(context, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:32]


IMPORTS = re.compile(rb"""{%-?\s*(?:import|include|from)\s+["']([^"'/]+)["']""")


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TemplateError(f"template {path}: {exc.strerror}") from None


def managed(template: str | Path, context: dict[str, Any], inputs: str) -> str:
    """The whole managed file: header line, then the rendered body."""
    body = render(template, context)
    return HEADER.format(inputs=inputs, body=digest(body)) + body


def replacement(template: str | Path, context: dict[str, Any], live: str | None) -> str | None:
    """The managed file `live` must become, or None when it already is exactly that. Jinja2 is
    imported only when the header says the inputs or the body changed."""
    inputs = fingerprint(template, context)
    if is_current(live, inputs):
        return None
    text = managed(template, context, inputs)
    return None if text == live else text


def is_current(live: str | None, inputs: str) -> bool:
    """True when `live` is exactly what inputs with this fingerprint render to, body untouched."""
    if live is None:
        return False
    first, _, body = live.partition("\n")
    return first + "\n" == HEADER.format(inputs=inputs, body=digest(body))


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@lru_cache(maxsize=8)
def _environment(directory: str):
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader([directory, str(PACKAGE_TEMPLATES)]),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=False,
        auto_reload=True,
    )
