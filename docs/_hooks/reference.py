"""MkDocs hook: reference pages rendered from the code at build time, so they cannot drift from it.

A page asks for a generated block with a marker line of its own:

- ``<!-- generated: openapi -->``: every route of the service (``service.app.create_app().openapi()``):
  parameters, form fields, answers, then every schema, as Markdown.
- ``<!-- generated: settings -->``: the table of ``REID_*`` settings from the pydantic-settings class
  (``service.core.settings.Settings``): variable, default, what is accepted, meaning.

Nothing generated is committed. A marker whose block cannot be built fails the build instead of leaving a hole.
Wired in mkdocs.yml (``hooks:``); ``render_openapi`` and ``render_settings`` are plain functions the tests call too.

    NO_MKDOCS_2_WARNING=1 mkdocs build --strict
"""

from __future__ import annotations

import functools
import html
import json
import logging
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

logger = logging.getLogger("mkdocs.hooks.reference")

ROOT = Path(__file__).resolve().parents[2]
MARKERS: dict[str, Callable[[], str]] = {}
HTTP_METHODS = ("get", "post", "put", "patch", "delete")


def _project_on_path() -> None:
    """The repository root on sys.path, so the hook imports this checkout's service package."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


def cell(text: object) -> str:
    """Text for a Markdown table cell: one line; pipes escaped so they cannot split the row, and angle brackets
    outside `code spans` escaped so that ``<prefix>_items`` shows as written instead of becoming an HTML tag."""
    parts = " ".join(str(text).split()).split("`")
    parts[::2] = [html.escape(part, quote=False) for part in parts[::2]]
    return "`".join(parts).replace("|", "&#124;")


def code(text: object) -> str:
    """Inline code that is safe inside a table cell (pipes and angle brackets escaped)."""
    return "<code>" + html.escape(str(text)).replace("|", "&#124;") + "</code>"


def anchor(schema_name: str) -> str:
    """The heading id the schema's section gets (toc's slugify: lower case, no punctuation)."""
    return "schema-" + "".join(ch for ch in schema_name.lower() if ch.isalnum() or ch in "-_")


def type_of(schema: dict[str, Any]) -> str:
    """A short, readable type for a JSON-schema node: 'integer', 'array of string', 'Match', 'string or null'."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{anchor(name)})"
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return " or ".join(dict.fromkeys(type_of(s) for s in schema[key]))
    if "enum" in schema:
        return "one of " + ", ".join(code(v) for v in schema["enum"])
    if "const" in schema:
        return code(schema["const"])
    kind = schema.get("type")
    if kind == "array":
        return "array of " + type_of(schema.get("items", {}))
    if kind == "string" and (schema.get("format") == "binary" or "contentMediaType" in schema):
        return "file"
    if kind == "object" and "additionalProperties" in schema and isinstance(schema["additionalProperties"], dict):
        return "object of " + type_of(schema["additionalProperties"])
    if isinstance(kind, list):
        return " or ".join(kind)
    return str(kind or "any")


def constraints(schema: dict[str, Any]) -> str:
    """Bounds, patterns and sizes of a node (and of the non-null branch of an optional one)."""
    nodes = [schema, *[s for key in ("anyOf", "oneOf") for s in schema.get(key, []) if s.get("type") != "null"]]
    parts: list[str] = []
    for node in nodes:
        if "minimum" in node and "maximum" in node:
            parts.append(f"{_number(node['minimum'])} to {_number(node['maximum'])}")
        elif "minimum" in node:
            parts.append(f">= {_number(node['minimum'])}")
        elif "maximum" in node:
            parts.append(f"<= {_number(node['maximum'])}")
        if "exclusiveMinimum" in node:
            parts.append(f"> {_number(node['exclusiveMinimum'])}")
        if "exclusiveMaximum" in node:
            parts.append(f"< {_number(node['exclusiveMaximum'])}")
        if "pattern" in node:
            parts.append(code(node["pattern"]))
        if "minItems" in node:
            parts.append(f"at least {node['minItems']} item(s)")
        if "maxItems" in node:
            parts.append(f"at most {node['maxItems']} items")
        if "maxLength" in node:
            parts.append(f"at most {node['maxLength']} characters")
    return ", ".join(dict.fromkeys(parts))


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _example(schema: dict[str, Any]) -> str:
    examples = schema.get("examples")
    if isinstance(examples, list) and examples:
        return code(json.dumps(examples[0], ensure_ascii=False))
    if "example" in schema:
        return code(json.dumps(schema["example"], ensure_ascii=False))
    return ""


def _default(schema: dict[str, Any]) -> str:
    return code(json.dumps(schema["default"])) if "default" in schema else ""


def _field_rows(properties: dict[str, Any], required: Iterable[str]) -> list[str]:
    needed = set(required)
    rows = ["| Field | Type | Required | Default | Accepts | Description | Example |", "|---|---|---|---|---|---|---|"]
    for name, prop in properties.items():
        rows.append(
            "| "
            + " | ".join(
                [
                    code(name),
                    type_of(prop),
                    "yes" if name in needed else "",
                    _default(prop),
                    constraints(prop),
                    cell(prop.get("description", "")),
                    _example(prop),
                ]
            )
            + " |"
        )
    return rows


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return name, spec["components"]["schemas"][name]
    return None, schema


def render_openapi(spec: dict[str, Any]) -> str:
    """Markdown for every operation and schema of an OpenAPI 3.x document, in the document's order."""
    lines: list[str] = [
        f"Generated from the OpenAPI {spec.get('openapi', '')} schema of {cell(spec['info']['title'])} "
        f"{spec['info'].get('version', '')} when this site was built. Every error answer has the "
        f"[ErrorResponse](#{anchor('ErrorResponse')}) shape.",
        "",
    ]
    schemes = spec.get("components", {}).get("securitySchemes", {})
    if schemes:
        lines += ["**Authentication.** Routes marked *key* accept either of:", ""]
        for name, scheme in schemes.items():
            where = (
                f"header {code(scheme['name'])}" if scheme.get("type") == "apiKey" else cell(scheme.get("scheme", ""))
            )
            lines.append(f"- `{name}` ({where}): {cell(scheme.get('description', ''))}")
        lines.append("")

    lines += ["## Routes", "", "| Method | Path | Summary | Key |", "|---|---|---|---|"]
    operations = [
        (path, method, op)
        for path, item in spec["paths"].items()
        for method, op in item.items()
        if method in HTTP_METHODS
    ]
    for path, method, op in operations:
        slug = _operation_anchor(method, path)
        lines.append(
            f"| {method.upper()} | [{code(path)}](#{slug}) | {cell(op.get('summary', ''))} | "
            f"{'key' if op.get('security') else ''} |"
        )
    lines.append("")

    for path, method, op in operations:
        lines += [f"### {method.upper()} `{path}` {{#{_operation_anchor(method, path)}}}", ""]
        if op.get("summary"):
            lines += [f"**{op['summary']}**", ""]
        if op.get("description"):
            lines += [op["description"].strip(), ""]
        params = op.get("parameters", [])
        if params:
            lines += [
                "| Parameter | In | Type | Required | Default | Accepts | Description |",
                "|---|---|---|---|---|---|---|",
            ]
            for p in params:
                schema = p.get("schema", {})
                lines.append(
                    f"| {code(p['name'])} | {p['in']} | {type_of(schema)} | {'yes' if p.get('required') else ''} | "
                    f"{_default(schema)} | {constraints(schema)} | {cell(p.get('description', ''))} |"
                )
            lines.append("")
        body = op.get("requestBody")
        if body:
            for media, content in body.get("content", {}).items():
                name, schema = _resolve(spec, content.get("schema", {}))
                lines += [f"Request body: `{media}`{' (required)' if body.get('required') else ''}.", ""]
                if "properties" in schema:
                    lines += [*_field_rows(schema["properties"], schema.get("required", [])), ""]
                elif name:
                    lines += [f"Schema: [{name}](#{anchor(name)}).", ""]
        lines += ["| Status | Meaning | Body |", "|---|---|---|"]
        for status in sorted(op.get("responses", {}), key=str):
            answer = op["responses"][status]
            bodies = [
                f"{code(media)}: {type_of(c['schema'])}" if c.get("schema") else code(media)
                for media, c in answer.get("content", {}).items()
            ]
            lines.append(f"| {status} | {cell(answer.get('description', ''))} | {'; '.join(bodies)} |")
        lines.append("")

    schemas = spec.get("components", {}).get("schemas", {})
    lines += ["## Schemas", ""]
    for name, schema in schemas.items():
        lines += [f"### {name} {{#{anchor(name)}}}", ""]
        if schema.get("description"):
            lines += [cell(schema["description"]), ""]
        if "properties" in schema:
            lines += [*_field_rows(schema["properties"], schema.get("required", [])), ""]
        else:
            lines += [f"Type: {type_of(schema)}.", ""]
    return "\n".join(lines)


def _operation_anchor(method: str, path: str) -> str:
    slug = "".join(ch if ch.isalnum() else "-" for ch in path.lower()).strip("-")
    return f"{method.lower()}-{slug or 'root'}".replace("--", "-")


def render_settings(settings_cls: type) -> str:
    """The REID_* table of a pydantic-settings class: one row per field, in declaration order."""
    prefix = str(settings_cls.model_config.get("env_prefix", ""))  # type: ignore[attr-defined]
    properties = settings_cls.model_json_schema()["properties"]  # type: ignore[attr-defined]
    rows = ["| Variable | Default | Accepts | Meaning |", "|---|---|---|---|"]
    for name, field in settings_cls.model_fields.items():  # type: ignore[attr-defined]
        schema = properties.get(name, {})
        rows.append(
            f"| `{(prefix + name).upper()}` | {_setting_default(field.get_default(call_default_factory=True))} | "
            f"{', '.join(x for x in (type_of(schema), constraints(schema)) if x)} | {cell(field.description or '')} |"
        )
    return "\n".join(rows)


def _setting_default(default: object) -> str:
    """How an environment variable's default reads: none, empty, true/false, ./data, 5.0."""
    if default is None:
        return "none"
    if default == "":
        return "empty"
    if isinstance(default, bool):
        return code(str(default).lower())
    if isinstance(default, Path) and not default.is_absolute():
        return code(f"./{default.as_posix()}")
    return code(default)


@functools.cache
def _openapi_markdown() -> str:
    _project_on_path()
    from service.app import create_app

    return render_openapi(create_app().openapi())


@functools.cache
def _settings_markdown() -> str:
    _project_on_path()
    from service.core.settings import Settings

    return render_settings(Settings)


MARKERS["<!-- generated: openapi -->"] = _openapi_markdown
MARKERS["<!-- generated: settings -->"] = _settings_markdown


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Replace each marker line with its generated block (mkdocs hook event)."""
    for marker, render in MARKERS.items():
        if marker in markdown:
            logger.info("%s: rendering %s", page.file.src_uri, marker)
            markdown = markdown.replace(marker, render())
    return markdown
