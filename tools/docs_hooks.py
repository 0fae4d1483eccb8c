"""MkDocs hook (mkdocs.yml: hooks): Sphinx-style roles in the docstrings, rendered for the site.

The docstrings name other objects the Sphinx way (``:func:`local_dist```, ``:class:`~partdist.eval.Distance```);
mkdocstrings renders them as Markdown, which leaves ``:func:`` before the code span. This hook drops
the role prefix and turns a fully qualified ``partdist.*`` name into a cross-reference that
mkdocs-autorefs resolves when the object has an API section (and leaves as plain code otherwise).
``~`` shows the last component only, as in Sphinx.
"""

import html
import re

_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|data|attr|exc|obj):<code>(~?)([^<]*)</code>")


def _replace(m):
    tilde, target = m.group(1), html.unescape(m.group(2))
    shown = target.rsplit(".", 1)[-1] if tilde else target
    code = f"<code>{html.escape(shown)}</code>"
    if target.startswith("partdist.") and re.fullmatch(r"[\w.]+", target):
        return f'<autoref identifier="{target}" optional>{code}</autoref>'
    return code


def on_page_content(html_text, **kwargs):
    return _ROLE.sub(_replace, html_text)
