"""Render a Jinja2 template to text.

Jinja2 costs tens of milliseconds to import, and Serf runs handlers serially, so it is imported
only when something has to be rendered. One Environment per template directory is kept for the
life of the process; it re-reads a template whose file changed (the daemon's hot reload).
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import TemplateError


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

    Equal fingerprints mean equal output, so the unchanged path can stop before rendering.
    """
    try:
        source = Path(template).read_bytes()
    except OSError as exc:
        raise TemplateError(f"template {template}: {exc.strerror}") from None
    digest = hashlib.sha256(source)
    digest.update(json.dumps(context, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:32]


@lru_cache(maxsize=8)
def _environment(directory: str):
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(directory),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=False,
        auto_reload=True,
    )
