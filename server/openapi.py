"""The OpenAPI 3.0.3 document of API v1, built as a dict and served at `/openapi.json`.

The tests run schemathesis against a live server from this document (valid and invalid requests, every answer
checked against it), so it is the contract, not decoration.
"""

from __future__ import annotations

from typing import Any

IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp")
NPY = "application/x-npy"
SAFETENSORS = "application/safetensors"


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


ERRORS = {
    "400": _error("Malformed request: bad JSON, corrupt or truncated image, bad query parameter."),
    "401": _error("Missing or invalid API key."),
    "403": _error("A frame URL whose signature is missing, wrong or expired."),
    "404": _error("Unknown route or head."),
    "405": _error("Method not allowed on this route."),
    "406": _error("None of the types in Accept can be produced."),
    "408": _error("The request body did not arrive in time."),
    "413": _error("Body too large, too many images, or an image with too many pixels."),
    "414": _error("Request line (path and query) longer than the server's limit of 4094 bytes."),
    "415": _error("Unsupported Content-Type or image format."),
    "422": _error("Well-formed JSON of the wrong shape, or invalid base64."),
    "503": _error("Queue full, shutting down, or not ready; retry after the Retry-After header."),
}

IMAGES_BODY = {
    "required": True,
    "description": "One image as the raw body, several as multipart files, or JSON with base64 images.",
    "content": {
        **{t: {"schema": {"type": "string", "format": "binary"}} for t in IMAGE_TYPES},
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}},
            }
        },
        "application/json": {"schema": {"$ref": "#/components/schemas/ImagesJSON"}},
    },
}


def _responses(ok: dict[str, Any], *codes: str) -> dict[str, Any]:
    return {"200": ok, **{c: ERRORS[c] for c in codes}}


SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            }
        },
    },
    "ImagesJSON": {
        "type": "object",
        "required": ["images"],
        "properties": {
            "images": {"type": "array", "minItems": 1, "items": {"type": "string", "format": "byte", "minLength": 1}}
        },
    },
    "Embeddings": {
        "type": "object",
        "required": ["encoder", "count", "dim", "embeddings"],
        "properties": {
            "encoder": {"type": "string"},
            "count": {"type": "integer"},
            "dim": {"type": "integer"},
            "embeddings": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
            "grid": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2},
            "tokens": {
                "type": "array",
                "description": "(count, gh, gw, dim) token grids, when tokens=true",
                "items": {"type": "array", "items": {"type": "array", "items": {"type": "array", "items": {}}}},
            },
        },
    },
    "Predictions": {
        "type": "object",
        "required": ["encoder", "count", "heads"],
        "properties": {
            "encoder": {"type": "string"},
            "count": {"type": "integer"},
            "heads": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "id", "outputs"],
                    "properties": {
                        "name": {"type": "string"},
                        "id": {"type": "string"},
                        "task": {"type": "string"},
                        "outputs": {
                            "type": "array",
                            "description": "one answer per image, shaped by the head's task (boxes in each image's "
                            "own pixel coordinates)",
                            "items": {"type": "object"},
                        },
                    },
                },
            },
        },
    },
    "Card": {
        "type": "object",
        "required": ["id", "kind", "config"],
        "properties": {
            "id": {"type": "string"},
            "kind": {"type": "string"},
            "name": {"type": "string", "nullable": True},
            "config": {"type": "object"},
            "parents": {"type": "object"},
            "metrics": {"type": "object"},
            "created": {"type": "string"},
        },
    },
    "Models": {
        "type": "object",
        "required": ["encoder", "heads"],
        "properties": {
            "encoder": {"$ref": "#/components/schemas/Card"},
            "heads": {"type": "array", "items": {"$ref": "#/components/schemas/Card"}},
        },
    },
    "Status": {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "string"}, "encoder": {"type": "string"}},
    },
}


def _json(ref: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}},
    }


def document(version: str = "1") -> dict[str, Any]:
    """The OpenAPI document (paths, schemas, bearer security; health routes open)."""
    open_route = {"security": []}
    return {
        "openapi": "3.0.3",
        "info": {"title": "fth embedding service", "version": version},
        "components": {
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
            "schemas": SCHEMAS,
        },
        "security": [{"bearerAuth": []}],
        "paths": {
            "/healthz": {
                "get": {**open_route, "operationId": "healthz", "responses": _responses(_json("Status", "Alive."))}
            },
            "/readyz": {
                "get": {
                    **open_route,
                    "operationId": "readyz",
                    "responses": _responses(_json("Status", "Model loaded and warmed up."), "503"),
                }
            },
            "/metrics": {
                "get": {
                    **open_route,
                    "operationId": "metrics",
                    "responses": {
                        "200": {
                            "description": "Prometheus text format 0.0.4.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    **open_route,
                    "operationId": "openapi",
                    "responses": {
                        "200": {
                            "description": "This document.",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
            "/v1/frames/{frame_id}": {
                "get": {
                    **open_route,  # a browser's <img> sends no key: the signed URL is the authority (server.frames)
                    "operationId": "frame",
                    "parameters": [
                        {"name": "frame_id", "in": "path", "required": True, "schema": {"type": "string"}},
                        {
                            "name": "exp",
                            "in": "query",
                            "required": True,
                            "schema": {"type": "integer"},
                            "description": "Unix time the URL expires.",
                        },
                        {
                            "name": "sig",
                            "in": "query",
                            "required": True,
                            "schema": {"type": "string"},
                            "description": "HMAC-SHA256 of '<frame_id>:<exp>' under the workspace's key, hex.",
                        },
                    ],  # fmt: skip
                    "responses": {
                        "200": {
                            "description": "The frame's stored bytes (signed, expiring URLs made by fth label push).",
                            "content": {t: {"schema": {"type": "string", "format": "binary"}} for t in IMAGE_TYPES},
                        },
                        "403": ERRORS["403"],
                        "404": _error("No such frame in the catalog."),
                        "414": ERRORS["414"],
                    },
                }
            },
            "/v1/models": {
                "get": {
                    "operationId": "models",
                    "responses": _responses(_json("Models", "Encoder and head cards."), "401"),
                }
            },
            "/v1/embed": {
                "post": {
                    "operationId": "embed",
                    "parameters": [
                        {
                            "name": "tokens",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "boolean", "default": False},
                            "description": "also return the (gh, gw, dim) token grid of each image",
                        },
                    ],
                    "requestBody": IMAGES_BODY,
                    "responses": _responses(
                        {
                            "description": "Pooled embeddings (and token grids): JSON, .npy or safetensors per Accept.",
                            "headers": {"X-Encoder-Id": {"schema": {"type": "string"}}},
                            "content": {
                                "application/json": {"schema": {"$ref": "#/components/schemas/Embeddings"}},
                                NPY: {"schema": {"type": "string", "format": "binary"}},
                                SAFETENSORS: {"schema": {"type": "string", "format": "binary"}},
                            },
                        },
                        "400",
                        "401",
                        "406",
                        "408",
                        "413",
                        "415",
                        "422",
                        "503",
                    ),
                }
            },
            "/v1/predict": {
                "post": {
                    "operationId": "predict",
                    "parameters": [
                        {
                            "name": "heads",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "string"},
                            "description": "comma-separated head names or ids (default: every loaded head)",
                        },
                    ],
                    "requestBody": IMAGES_BODY,
                    "responses": _responses(
                        _json("Predictions", "Each head's output per image, one encoder pass."),
                        "400",
                        "401",
                        "404",
                        "408",
                        "413",
                        "414",
                        "415",
                        "422",
                        "503",
                    ),
                }
            },
        },
    }
