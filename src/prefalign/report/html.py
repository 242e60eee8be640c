"""report.html: the report as one self-contained page, to open in a browser or send as one file.

It is report.md rendered by markdown-it (raw HTML in the Markdown is escaped, never passed
through: the example texts are model output, and a `<script>` in one must show as text), each plot
embedded as a PNG data URI, and the run's provenance appended: the resolved config, the software
versions and the device. No script, font or stylesheet is fetched; the page has no JavaScript.
"""

from __future__ import annotations

import base64
import html
import platform
import re
from importlib import metadata
from pathlib import Path

import yaml

# The packages whose versions the report names.
VERSIONED = ("prefalign", "torch", "transformers", "trl", "accelerate", "peft", "datasets", "tokenizers")

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #1a1a1a; line-height: 1.45; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f0f0f0; }
tbody tr:nth-child(even) { background: #fafafa; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; font-size: 0.85em; }
code { background: #f3f3f3; padding: 0 0.2em; }
li { overflow-wrap: anywhere; }
"""


def versions() -> dict[str, str]:
    """Installed versions of the packages that made the results (and Python's)."""
    out = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def render(markdown_text: str, root: Path, config: dict, device: str, title: str) -> str:
    """The page: `markdown_text` (report.md, whose images are paths under `root`) plus provenance."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown_text)

    def embed(match: re.Match) -> str:
        path = root / html.unescape(match.group(1))
        return f'<img src="{data_uri(path)}"' if path.is_file() else match.group(0)

    body = re.sub(r'<img src="([^"]+)"', embed, body)
    software = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in versions().items())
    provenance = (
        "<h2>Provenance</h2>"
        f"<p>Device: <code>{html.escape(device)}</code>.</p>"
        f"<table><thead><tr><th>package</th><th>version</th></tr></thead><tbody>{software}</tbody></table>"
        "<h3>Resolved config</h3>"
        f"<pre>{html.escape(yaml.safe_dump(config, sort_keys=False))}</pre>"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n"
        f"<body>\n{body}\n{provenance}\n</body></html>\n"
    )
