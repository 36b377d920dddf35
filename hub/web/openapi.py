"""The OpenAPI 3.1 description of ``/hub/api``, assembled from the web modules.

    GET /hub/api/openapi.json        -> the document below, no login needed

Each web module that serves ``/hub/api`` exports ``OPENAPI_PATHS`` (a "paths"
fragment, relative to the ``/hub/api`` server) and may export
``OPENAPI_SCHEMAS`` (extra ``components.schemas``). ``API_MODULES`` lists them;
add a module there when it gains API handlers. Fragments refer to the shared
pieces here: ``#/components/schemas/Error``, ``#/components/responses/NotFound``
and the like, most easily through ``errors(400, 404)`` and ``json_content(...)``.

    OPENAPI_PATHS = {"/things": {"get": {
        "summary": "List things",
        "responses": {"200": json_content({"type": "array"}), **errors(401, 403)},
    }}}
"""

from __future__ import annotations

import copy
import functools
import importlib
import json
from typing import Any

import hub
from hub.web.base import BaseHandler

# Every module with /hub/api handlers; the order fixes the order of paths.
API_MODULES: tuple[str, ...] = (
    "hub.web.api",
    "hub.web.servers_api",
    "hub.web.catalog_api",
    "hub.web.admin_api",
    "hub.web.storage_api",
    "hub.web.oidc",
    "hub.web.stats_api",
    "hub.web.limits_api",
    "hub.web.tokens_api",
    "hub.web.openapi",
)

SERVER_URL = "/hub/api"

_ERRORS: dict[int, tuple[str, str]] = {
    400: ("BadRequest", "The request is malformed or a value is out of range."),
    401: ("Unauthorized", "No valid credentials: log in, or send a valid API token."),
    403: (
        "Forbidden",
        "The credentials do not allow this (a missing scope, another user's things, a quota "
        "refusal), or a cookie-authenticated change came without its XSRF token.",
    ),
    404: ("NotFound", "The user, team, server or environment does not exist."),
    409: ("Conflict", "The request contradicts the current state."),
    429: ("TooManyRequests", "Too much at once; retry after the number of seconds given."),
    502: ("BadGateway", "The server's app failed to start; the message says why."),
    503: ("ServiceUnavailable", "The container engine cannot be reached."),
}


def ref(name: str) -> dict[str, str]:
    """``{"$ref": "#/components/schemas/<name>"}``."""
    return {"$ref": f"#/components/schemas/{name}"}


def errors(*codes: int) -> dict[str, Any]:
    """The shared error responses for ``codes`` (each a JSON ``Error``)."""
    return {str(c): {"$ref": f"#/components/responses/{_ERRORS[c][0]}"} for c in codes}


def json_content(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    """A response whose body is JSON matching ``schema``."""
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def json_body(schema: dict[str, Any], *, required: bool = False) -> dict[str, Any]:
    """A ``requestBody`` of JSON matching ``schema``."""
    return {"required": required, "content": {"application/json": {"schema": schema}}}


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


# Sizes as the API accepts them: bytes, or "512M", "4G", "2GiB".
SIZE_PATTERN = r"^\s*\d+(\.\d+)?\s*[KMGTkmgt]?([Ii]?[Bb])?\s*$"
USERNAME_PATTERN = r"^[a-z0-9_][a-z0-9._-]{0,31}$"
SERVER_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,31}$"
# The largest amount any field stores (PostgreSQL BIGINT).
MAX_AMOUNT = 2**63 - 1

SIZE: dict[str, Any] = {
    "oneOf": [
        {"type": "integer", "minimum": 0, "maximum": MAX_AMOUNT},
        {"type": "string", "pattern": SIZE_PATTERN, "maxLength": 64},
    ],
    "description": "Bytes, or a size with a binary unit such as 512M or 4G.",
}

_RESOURCES = {
    "type": "object",
    "required": ["cpus", "memory", "gpus"],
    "properties": {
        "cpus": {"type": "number", "description": "CPU cores"},
        "memory": {"type": "integer", "description": "bytes"},
        "gpus": {"type": "integer", "minimum": 0},
    },
}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["status", "message"],
        "properties": {
            "status": {"type": "integer", "description": "The HTTP status again."},
            "message": {"type": "string", "description": "What went wrong, in plain words."},
        },
    },
    "Version": {
        "type": "object",
        "required": ["version"],
        "properties": {"version": {"type": "string", "examples": [hub.__version__]}},
    },
    "Resources": _RESOURCES,
    "ServerResources": {
        **_RESOURCES,
        "required": ["cpus", "memory", "gpus", "gpu_ids"],
        "properties": {
            **_RESOURCES["properties"],  # type: ignore[dict-item]
            "gpu_ids": {"type": "array", "items": {"type": "string"}},
        },
    },
    "Server": {
        "type": "object",
        "description": "A server, shaped like JupyterHub's, plus environment and resources.",
        "required": [
            "name",
            "ready",
            "pending",
            "url",
            "progress_url",
            "started",
            "last_activity",
            "state",
            "user_options",
            "environment",
            "resources",
            "stopped_reason",
        ],
        "properties": {
            "name": {"type": "string", "description": "Empty for the default server."},
            "ready": {"type": "boolean"},
            "pending": {"enum": ["spawn", "stop", None]},
            "url": {"type": "string", "examples": ["/user/alice/lab/"]},
            "progress_url": {"type": "string"},
            "started": {"type": ["string", "null"], "format": "date-time"},
            "last_activity": {"type": ["string", "null"], "format": "date-time"},
            "state": {
                "enum": ["stopped", "starting", "running", "stopping", "failed", "unknown"],
                "description": "unknown: the container engine could not be asked.",
            },
            "user_options": {"type": "object", "description": "The launch choices."},
            "environment": {"type": "string"},
            "resources": ref("ServerResources"),
            "stopped_reason": {
                "type": ["string", "null"],
                "examples": ["stopped: exceeded its 2 GiB memory limit"],
            },
            "image_digest": {"type": "string", "description": "The image it runs, pinned."},
            "notices": {
                "type": "array",
                "items": {"type": "string"},
                "description": "What the owner of a running server should know.",
                "examples": [["a process in lab was killed: over the 2 GiB memory limit"]],
            },
            "last_oom": {
                "type": ["string", "null"],
                "format": "date-time",
                "description": "When a process in the running server was last OOM-killed.",
            },
        },
    },
    "User": {
        "type": "object",
        "required": ["name", "admin", "disabled", "servers"],
        "properties": {
            "name": {"type": "string"},
            "admin": {"type": "boolean"},
            "disabled": {"type": "boolean"},
            "servers": {
                "type": "object",
                "description": "By server name; the default server's name is empty.",
                "additionalProperties": ref("Server"),
            },
            "one_time_password": {
                "type": "string",
                "description": "Only when a user is created without a password; shown once.",
            },
        },
    },
    "LaunchRequest": {
        "type": "object",
        "description": "Omitted fields take the environment's defaults.",
        "additionalProperties": False,
        "properties": {
            "environment": {"type": "string", "examples": ["jupyter"]},
            "version": {
                "type": "string",
                "description": "A version label or image digest (default: the current one).",
            },
            "cpus": {"type": "number", "minimum": 0.01, "examples": [2]},
            "memory": {**SIZE, "examples": ["4G"]},
            "gpus": {"type": "integer", "minimum": 0, "examples": [0]},
        },
        "examples": [{"environment": "jupyter", "cpus": 2, "memory": "4G", "gpus": 0}],
    },
    "StopRequest": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "remove": {
                "type": "boolean",
                "default": False,
                "description": (
                    "Also delete the container and forget the server (its name is free "
                    "again); the home volume stays."
                ),
            }
        },
    },
    "ProgressEvent": {
        "type": "object",
        "description": "One Server-Sent Event's data (``data: {...}``).",
        "required": ["progress", "message", "ready", "failed"],
        "properties": {
            "progress": {"type": "integer", "minimum": 0, "maximum": 100},
            "message": {"type": "string"},
            "ready": {"type": "boolean"},
            "failed": {"type": "boolean"},
            "url": {"type": "string", "description": "Only once ready."},
        },
    },
    "ProgressStreamEvent": {
        "type": "object",
        "description": "One event of the progress stream; its data is a ProgressEvent.",
        "required": ["data"],
        "properties": {
            "event": {"const": "message"},
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": ref("ProgressEvent"),
            },
        },
    },
    "QuotaLimits": {
        "type": "object",
        "description": "null: no limit of its own (the defaults or the team's apply).",
        "required": ["cpus", "memory", "gpus", "servers", "storage"],
        "properties": {
            "cpus": {"type": ["number", "null"]},
            "memory": {"type": ["integer", "null"], "description": "bytes"},
            "gpus": {"type": ["integer", "null"]},
            "servers": {"type": ["integer", "null"]},
            "storage": {"type": ["integer", "null"], "description": "bytes"},
        },
    },
    "QuotaUsage": {
        "type": "object",
        "required": ["cpus", "memory", "gpus", "servers"],
        "properties": {
            "cpus": {"type": "number"},
            "memory": {"type": "integer"},
            "gpus": {"type": "integer"},
            "servers": {"type": "integer"},
            "storage": {
                "type": ["integer", "null"],
                "description": "bytes in the volumes at the last measurement; null: not yet",
            },
        },
    },
    "Quota": {
        "type": "object",
        "required": ["limits", "used"],
        "properties": {"limits": ref("QuotaLimits"), "used": ref("QuotaUsage")},
    },
    "QuotaUpdate": {
        "type": "object",
        "description": "The fields to change; null lifts a limit. At least one field.",
        "additionalProperties": False,
        "minProperties": 1,
        "properties": {
            "cpus": nullable({"type": "number", "minimum": 0, "maximum": MAX_AMOUNT}),
            "memory": nullable(SIZE),
            "gpus": nullable({"type": "integer", "minimum": 0, "maximum": MAX_AMOUNT}),
            "servers": nullable({"type": "integer", "minimum": 0, "maximum": MAX_AMOUNT}),
            "storage": nullable(SIZE),
        },
        "examples": [{"memory": "8G", "servers": 6}],
    },
    "QuotaOverview": {
        "type": "object",
        "required": ["users", "teams"],
        "properties": {
            "users": {"type": "object", "additionalProperties": ref("Quota")},
            "teams": {"type": "object", "additionalProperties": ref("Quota")},
        },
    },
}

PARAMETERS: dict[str, Any] = {
    "UserName": {
        "name": "name",
        "in": "path",
        "required": True,
        "description": "A username: 1 to 32 of a-z, 0-9, '.', '_', '-', not starting with "
        "'-' or '.'.",
        "schema": {"type": "string", "pattern": USERNAME_PATTERN},
    },
    "ServerName": {
        "name": "server",
        "in": "path",
        "required": True,
        "description": "A server name: 1 to 32 of a-z, 0-9, '_', '-', starting with a letter "
        "or digit.",
        "schema": {"type": "string", "pattern": SERVER_NAME_PATTERN},
    },
}


def param(name: str) -> dict[str, str]:
    """``{"$ref": "#/components/parameters/<name>"}`` (``UserName``, ``ServerName``)."""
    return {"$ref": f"#/components/parameters/{name}"}


SECURITY_SCHEMES: dict[str, Any] = {
    "token": {
        "type": "apiKey",
        "in": "header",
        "name": "Authorization",
        "description": "`Authorization: token <t>` (or `Bearer <t>`) with an API token "
        "from `labdock token create`.",
    },
    "cookie": {
        "type": "apiKey",
        "in": "cookie",
        "name": "labdock-session",
        "description": "The browser session (`__Host-labdock-session` over HTTPS); "
        "requests that change state also need the `_xsrf` cookie echoed in `X-XSRFToken`.",
    },
}


def _responses() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for code, (name, text) in _ERRORS.items():
        response = json_content(ref("Error"), text)
        if code == 429:
            response["headers"] = {
                "Retry-After": {
                    "description": "Seconds to wait before trying again.",
                    "schema": {"type": "integer", "minimum": 0},
                }
            }
        out[name] = response
    return out


def _merge_paths(into: dict[str, Any], fragment: dict[str, Any], module: str) -> None:
    for path, item in fragment.items():
        existing = into.setdefault(path, {})
        for key, value in item.items():
            if key in existing and existing[key] != value:
                raise ValueError(f"{module} describes {key} {path} again, differently")
            existing[key] = copy.deepcopy(value)


def build_document(modules: tuple[str, ...] = API_MODULES) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``/hub/api`` from the fragments of ``modules``."""
    paths: dict[str, Any] = {}
    schemas = copy.deepcopy(SCHEMAS)
    for name in modules:
        module = importlib.import_module(name)
        _merge_paths(paths, getattr(module, "OPENAPI_PATHS", {}), name)
        for key, schema in getattr(module, "OPENAPI_SCHEMAS", {}).items():
            if key in schemas and schemas[key] != schema:
                raise ValueError(f"{name} redefines the schema {key}")
            schemas[key] = copy.deepcopy(schema)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "labdock hub API",
            "version": hub.__version__,
            "description": "Launch and manage data-science workspaces. Errors are JSON "
            '`{"status": <code>, "message": "<what to do>"}`.',
            "license": {"name": "BSD-3-Clause", "identifier": "BSD-3-Clause"},
        },
        "servers": [{"url": SERVER_URL}],
        "security": [{"token": []}, {"cookie": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": _responses(),
            "parameters": copy.deepcopy(PARAMETERS),
            "securitySchemes": SECURITY_SCHEMES,
        },
    }


@functools.cache
def document_json() -> bytes:
    """The served document, built once per process."""
    return json.dumps(build_document(), indent=1).encode()


class OpenApiHandler(BaseHandler):
    """``GET /hub/api/openapi.json``: the spec, to anyone."""

    async def prepare(self) -> None:
        # The spec is public: no session or token lookup, so a bad token cannot break it.
        self.user = None

    async def get(self) -> None:
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.set_header("Cache-Control", "public, max-age=300")
        self.finish(document_json())


OPENAPI_PATHS: dict[str, Any] = {
    "/openapi.json": {
        "get": {
            "summary": "This OpenAPI document",
            "operationId": "getOpenApi",
            "tags": ["meta"],
            "security": [],
            "responses": {"200": json_content({"type": "object"}, "The OpenAPI 3.1 document.")},
        }
    }
}
