"""The report's Markdown as one self-contained HTML page (figures embedded as data URIs)."""

from __future__ import annotations

import html
import os
import re
from pathlib import Path


_MD_IMAGE = re.compile(r"^!\[([^\]]*)\]\(([^)]+)\)$")


def _inline(text: str) -> str:
    """Escape text, then render the inline Markdown the report uses: `code` and **bold**."""
    parts = re.split(r"(`[^`]*`)", text)
    out = []
    for part in parts:
        if len(part) >= 2 and part.startswith("`") and part.endswith("`"):
            out.append(f"<code>{html.escape(part[1:-1])}</code>")
        else:
            out.append(re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", html.escape(part)))
    return "".join(out)


def _data_uri(path: Path) -> str:
    import base64

    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def markdown_to_html(markdown: str, base: str | os.PathLike, title: str = "SegDINO report") -> str:
    """The report's Markdown as one self-contained HTML page: every image embedded as a data URI.

    Understands what :func:`write_report` writes: headings, paragraphs, tables, bullet lists and
    images on their own line (paths relative to ``base``).
    """
    base = Path(base)
    body: list[str] = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].rstrip()
        if not line:
            i += 1
            continue
        if line.startswith("#"):
            level = min(6, len(line) - len(line.lstrip("#")))
            body.append(f"<h{level}>{_inline(line[level:].strip())}</h{level}>")
            i += 1
        elif line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].startswith("|"):
                block.append([c.strip() for c in lines[i].strip().strip("|").split("|")])
                i += 1
            head, rest = block[0], [r for r in block[1:] if not all(set(c) <= set("-: ") for c in r)]
            body.append('<table class="summary">' if not body or "Summary" in body[-1] else "<table>")
            body.append("<tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr>")
            body += ["<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in rest]
            body.append("</table>")
        elif line.startswith("- "):
            body.append("<ul>")
            while i < len(lines) and lines[i].startswith("- "):
                body.append(f"<li>{_inline(lines[i][2:])}</li>")
                i += 1
            body.append("</ul>")
        elif (m := _MD_IMAGE.match(line)) is not None:
            alt, src = m.groups()
            body.append(f'<p><img alt="{html.escape(alt)}" src="{_data_uri(base / src)}"></p>')
            i += 1
        else:
            para = []
            while i < len(lines) and lines[i].strip() and not lines[i].startswith(("#", "|", "- ", "![")):
                para.append(lines[i].strip())
                i += 1
            body.append(f"<p>{_inline(' '.join(para))}</p>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #bbb;padding:3px 8px;"
             "text-align:left;font-size:90%}th{background:#eee}img{max-width:100%}code{background:#f3f3f3}")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{style}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")
