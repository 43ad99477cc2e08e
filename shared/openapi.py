"""Building blocks of hark's OpenAPI 3.1 documents, and the `/openapi.json` handler.

Schemas are JSON Schema 2020-12, as OpenAPI 3.1 has them. Each service writes its
own document (services/gateway/openapi.py, services/supervisor/openapi.py); a test
checks each against the routes the app serves and against live responses.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from shared.actor import VERSION

Schema = dict[str, Any]
STR: Schema = {"type": "string"}
INT: Schema = {"type": "integer"}
NUM: Schema = {"type": "number"}
BOOL: Schema = {"type": "boolean"}

ERROR: Schema = {
    "type": "object",
    "required": ["status", "error"],
    "properties": {
        "status": {"const": "error"},
        "code": {"type": "string", "description": "what a client can act on"},
        "error": {"type": "string", "description": "for a person"},
    },
}


def obj(required: list[str], **properties: Schema) -> Schema:
    return {"type": "object", "required": required, "properties": properties}


def maybe(kind: str) -> Schema:
    return {"type": [kind, "null"]}


def json_body(schema: Schema, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def text_body(media_type: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {media_type: {"schema": {"type": "string"}}}}


def error(description: str) -> dict[str, Any]:
    return json_body({"$ref": "#/components/schemas/Error"}, description)


ADMIN_ERRORS = {
    "401": error("HARK_ADMIN_TOKEN is set and the request lacks it"),
    "403": error("no admin token is set and the client is not on loopback"),
}
METRICS = {"200": text_body("text/plain", "Prometheus text format")}


def document(title: str, description: str, paths: dict[str, Any]) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": VERSION, "description": description},
        "paths": {
            **paths,
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {"200": json_body({"type": "object"}, "the OpenAPI document")},
                }
            },
        },
        "components": {
            "schemas": {"Error": ERROR},
            "securitySchemes": {
                "admin": {"type": "http", "scheme": "bearer", "description": "HARK_ADMIN_TOKEN"},
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "a key of HARK_API_KEYS / HARK_API_KEYS_FILE",
                },
                "deepgramKey": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "Token <a key of HARK_API_KEYS>, as Deepgram's SDKs send "
                    "it (or Bearer <key>, or the subprotocols token, <key>)",
                },
                "token": {
                    "type": "apiKey",
                    "in": "query",
                    "name": "token",
                    "description": "from POST /token; or the subprotocol hark-token.<token>",
                },
            },
        },
    }


def serve(doc: dict[str, Any]) -> web.RouteDef:
    """The GET /openapi.json route for `doc`."""

    async def handler(request: web.Request) -> web.Response:
        return web.json_response(doc)

    return web.get("/openapi.json", handler)
