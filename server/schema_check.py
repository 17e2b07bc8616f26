"""A small validator for the JSON-Schema subset our OpenAPI document uses (type, required, properties, items,
minItems, maxItems, enum, nullable, $ref), so tests can check answers against `/openapi.json` without a dependency.
"""

from __future__ import annotations

from typing import Any

TYPES = {
    "object": dict,
    "array": list,
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
}


def resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        node: Any = doc
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def validate(doc: dict[str, Any], schema: dict[str, Any], value: Any, where: str = "$") -> list[str]:
    """Problems found (empty when `value` conforms)."""
    schema = resolve(doc, schema)
    if value is None:
        return [] if schema.get("nullable") or not schema.get("type") else [f"{where}: null"]
    problems = []
    kind = schema.get("type")
    if kind:
        ok = isinstance(value, TYPES[kind]) and not (kind in ("integer", "number") and isinstance(value, bool))
        if not ok:
            return [f"{where}: expected {kind}, got {type(value).__name__}"]
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{where}: {value!r} not in {schema['enum']}")
    if isinstance(value, dict):
        problems += [f"{where}: missing {k!r}" for k in schema.get("required", []) if k not in value]
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                problems += validate(doc, sub, value[key], f"{where}.{key}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", len(value)):
            problems.append(f"{where}: {len(value)} items outside [{schema.get('minItems')}, {schema.get('maxItems')}]")
        if "items" in schema:
            for i, item in enumerate(value[:4]):  # the first few rows stand for the rest (token grids are large)
                problems += validate(doc, schema["items"], item, f"{where}[{i}]")
    return problems


def check_response(doc: dict[str, Any], path: str, method: str, status: int, content_type: str, body: Any) -> list[str]:
    """Is (status, content type, JSON body) an answer the document allows for this operation?"""
    op = doc["paths"].get(path, {}).get(method.lower())
    if op is None:
        return [f"{method} {path} is not documented"]
    responses = op["responses"]
    if str(status) not in responses:
        return [f"{method} {path}: status {status} not documented (has {sorted(responses)})"]
    content = responses[str(status)].get("content", {})
    mime = content_type.split(";")[0].strip()
    if mime not in content:
        return [f"{method} {path} {status}: content type {mime} not documented (has {sorted(content)})"]
    if mime == "application/json":
        return validate(doc, content[mime]["schema"], body)
    return []
