"""A human-readable page of the realtime AsyncAPI document: plain HTML, no script, no remote asset.

AsyncAPI's own viewers are JavaScript bundles usually loaded from a CDN; the API documentation must
work offline (``/docs`` serves its assets itself), and this document is small enough to render on
the server: every message with its fields, their types and descriptions, and examples.
"""

from __future__ import annotations

import html
import json
import re
from typing import Any

_CODE = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*([^*]+)\*\*")
_STYLE = """
body { font: 15px/1.5 system-ui, sans-serif; max-width: 62rem; margin: 2rem auto; padding: 0 1rem;
       color: #1f2328; }
code, pre { font: 13px ui-monospace, monospace; background: #f3f4f6; border-radius: 4px; }
code { padding: 0 .25em; } pre { padding: .6em; overflow-x: auto; }
table { border-collapse: collapse; width: 100%; margin: .5rem 0 1rem; }
th, td { border: 1px solid #d0d7de; padding: .3em .5em; text-align: left; vertical-align: top; }
th { background: #f6f8fa; } h2 { border-bottom: 1px solid #d0d7de; margin-top: 2.5rem; }
.dir { font-size: 12px; color: #57606a; text-transform: uppercase; letter-spacing: .05em; }
"""


def _inline(text: str) -> str:
    """Escape text, then render the few Markdown marks the descriptions use: `code` and **bold**."""
    return _BOLD.sub(r"<strong>\1</strong>", _CODE.sub(r"<code>\1</code>", html.escape(text)))


def _markdown(text: str) -> str:
    """Paragraphs and ``- `` bullet lists."""
    out: list[str] = []
    for block in text.strip().split("\n\n"):
        lines = block.splitlines()
        items = [line[2:] for line in lines if line.startswith("- ")]
        head = " ".join(line for line in lines if not line.startswith("- "))
        if head:
            out.append(f"<p>{_inline(head)}</p>")
        if items:
            out.append("<ul>" + "".join(f"<li>{_inline(item)}</li>" for item in items) + "</ul>")
    return "\n".join(out)


def _type(schema: dict[str, Any]) -> str:
    if "const" in schema:
        return f"<code>{html.escape(json.dumps(schema['const']))}</code>"
    if "anyOf" in schema:
        return " or ".join(_type(option) for option in schema["anyOf"])
    kind = schema.get("type")
    if kind == "array":
        return f"array of {_type(schema.get('items', {}))}"
    return html.escape(str(kind)) if kind else "any JSON"


def _fields(schema: dict[str, Any]) -> str:
    required = set(schema.get("required", []))
    rows = []
    for name, prop in schema.get("properties", {}).items():
        limits = [
            label.format(part[key])
            for part in (prop, *prop.get("anyOf", []))
            for key, label in (
                ("minimum", "≥ {}"),
                ("maximum", "≤ {}"),
                ("maxLength", "at most {} characters"),
            )
            if key in part
        ]
        rows.append(
            "<tr>"
            f"<td><code>{html.escape(name)}</code></td>"
            f"<td>{_type(prop)}{' (' + ', '.join(limits) + ')' if limits else ''}</td>"
            f"<td>{'yes' if name in required else 'no'}</td>"
            f"<td>{_markdown(prop.get('description', ''))}</td>"
            "</tr>"
        )
    return (
        "<table><tr><th>field</th><th>type</th><th>required</th><th>meaning</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _resolve(document: dict[str, Any], ref: str) -> dict[str, Any]:
    node: Any = document
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return dict(node)


def render_page(document: dict[str, Any], *, json_url: str, docs_url: str) -> str:
    """The page of an AsyncAPI document built by `foundry.realtime.asyncapi.build_asyncapi`.

    Args:
        document: the AsyncAPI document.
        json_url: where the document itself is served (linked from the page).
        docs_url: the HTTP API's documentation page (linked from the page).
    """
    info = document["info"]
    channel = next(iter(document["channels"].values()))
    directions = {}
    for operation in document["operations"].values():
        for ref in operation["messages"]:
            directions[ref["$ref"].rsplit("/", 1)[1]] = operation["action"]
    sections = []
    for name, message in document["components"]["messages"].items():
        schema = _resolve(document, message["payload"]["$ref"])
        direction = "client → server" if directions.get(name) == "receive" else "server → client"
        examples = "".join(
            f"<pre>{html.escape(json.dumps(example['payload']))}</pre>"
            for example in message.get("examples", [])
        )
        sections.append(
            f'<section id="{html.escape(name)}"><h2><span class="dir">{direction}</span><br>'
            f"<code>{html.escape(name)}</code></h2>"
            f"{_markdown(message.get('description', ''))}{_fields(schema)}"
            f"<h3>Example</h3>{examples}</section>"
        )
    toc = " · ".join(
        f'<a href="#{html.escape(name)}"><code>{html.escape(name)}</code></a>'
        for name in document["components"]["messages"]
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(info["title"])} {html.escape(info["version"])}</title>
<style>{_STYLE}</style></head>
<body>
<h1>{html.escape(info["title"])} <small>{html.escape(info["version"])}</small></h1>
<p><code>WS {html.escape(channel["address"])}</code> · AsyncAPI {html.escape(document["asyncapi"])} document:
<a href="{html.escape(json_url)}">{html.escape(json_url)}</a> ·
HTTP API: <a href="{html.escape(docs_url)}">{html.escape(docs_url)}</a></p>
{_markdown(info["description"])}
<p>Frames: {toc}</p>
{"".join(sections)}
</body></html>
"""
