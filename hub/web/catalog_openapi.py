"""The OpenAPI fragment of the catalog's endpoints (``hub.web.catalog_api``).

from hub.web.catalog_openapi import OPENAPI_PATHS, OPENAPI_SCHEMAS
"""

from __future__ import annotations

from typing import Any

from hub.domain.catalog import ENVIRONMENT_NAME, VERSION_LABEL
from hub.web.openapi import errors, json_body, json_content, ref

_NAME_PARAM = {
    "name": "name",
    "in": "path",
    "required": True,
    "description": "An environment name: 1 to 63 of a-z, 0-9 and '-'.",
    "schema": {"type": "string", "pattern": ENVIRONMENT_NAME.pattern},
}
_RESOURCE_INPUT = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "cpus": {"type": "number", "exclusiveMinimum": 0},
        "memory": {
            "oneOf": [
                {"type": "integer", "minimum": 1},
                {"type": "string", "maxLength": 32},
            ],
            "description": "Bytes, or a size such as 512M or 4G.",
        },
        "gpus": {"type": "integer", "minimum": 0},
    },
}
_RUNTIME = {
    "contents": {"type": "string", "description": "What the image holds, shown to users."},
    "port": {"type": "integer", "minimum": 1, "maximum": 65535},
    "command": {"type": "array", "items": {"type": "string"}, "minItems": 1},
    "prefix": {
        "enum": ["keep", "strip"],
        "description": "keep: the app serves under /user/<name>/<server>/ (told in "
        "LABDOCK_PREFIX); strip: the proxy removes the prefix.",
    },
    "readiness_path": {"type": "string", "description": "Relative to the prefix."},
    "gpu": {"type": "boolean"},
    "gpu_shareable": {"type": "boolean"},
    "pids_limit": {"type": "integer", "minimum": 1},
    "shm_size": {"oneOf": [{"type": "integer", "minimum": 1}, {"type": "string"}]},
    "home": {"type": "string"},
}
_IMAGE = {
    "type": "string",
    "description": "An image already on the engine (a tag, or sha256:<id>); nothing is pulled.",
    "examples": ["myorg/rstudio:4.3"],
}
_LABEL = {
    "type": "string",
    "pattern": VERSION_LABEL.pattern,
    "description": "The new version's label (default: the image's tag, else its short digest).",
}

OPENAPI_SCHEMAS: dict[str, Any] = {
    "Environment": {
        "type": "object",
        "required": [
            "name",
            "description",
            "version",
            "image",
            "contents",
            "default",
            "maximum",
            "gpu",
        ],
        "properties": {
            "name": {"type": "string", "examples": ["jupyter"]},
            "description": {"type": "string"},
            "version": {
                "type": "string",
                "description": "The label of the version a launch gets by default.",
                "examples": ["5be0c1d24a7e"],
            },
            "image": {"type": "string", "description": "The image, pinned by content digest."},
            "contents": {"type": "string", "description": "What that version holds."},
            "default": ref("Resources"),
            "maximum": ref("Resources"),
            "gpu": {"type": "boolean", "description": "Whether it can take GPUs."},
            "enabled": {"type": "boolean", "description": "Only with ?all=1."},
            "retired": {"type": "boolean", "description": "Only with ?all=1."},
        },
    },
    "EnvironmentVersion": {
        "type": "object",
        "required": ["version", "image", "digest", "contents", "created", "current"],
        "properties": {
            "version": {"type": "string", "description": "Its label."},
            "image": {"type": "string", "description": "The tag that keeps it."},
            "digest": {"type": "string", "examples": ["sha256:3f2a..."]},
            "contents": {"type": "string"},
            "created": {"type": "string", "format": "date-time"},
            "current": {"type": "boolean"},
        },
    },
    "EnvironmentDetail": {
        "allOf": [
            ref("Environment"),
            {
                "type": "object",
                "required": ["versions"],
                "description": "Admins also get enabled, retired, teams, source and the "
                "current version's runtime settings.",
                "properties": {
                    "versions": {"type": "array", "items": ref("EnvironmentVersion")},
                    "teams": {"type": "array", "items": {"type": "string"}},
                    "source": {"enum": ["manifest", "admin"]},
                    "command": {"type": "array", "items": {"type": "string"}},
                    **{k: v for k, v in _RUNTIME.items() if k not in ("contents", "command")},
                },
            },
        ]
    },
    "EnvironmentCreate": {
        "type": "object",
        "required": [
            "image",
            "description",
            "port",
            "command",
            "prefix",
            "readiness_path",
            "resources",
        ],
        "properties": {
            "image": _IMAGE,
            "version": _LABEL,
            "description": {"type": "string"},
            **_RUNTIME,
            "resources": {
                "type": "object",
                "required": ["default", "maximum"],
                "properties": {"default": _RESOURCE_INPUT, "maximum": _RESOURCE_INPUT},
            },
            "teams": {
                "type": "array",
                "items": {"type": "string"},
                "description": "Teams it is offered to; none: everyone.",
            },
            "enabled": {"type": "boolean", "default": True},
        },
    },
    "EnvironmentChange": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "description": {"type": "string", "maxLength": 2000},
            "resources": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"default": _RESOURCE_INPUT, "maximum": _RESOURCE_INPUT},
            },
            "enabled": {"type": "boolean"},
            "retired": {
                "type": "boolean",
                "description": "Retired and disabled environments cannot be launched or "
                "restarted; servers already running keep running.",
            },
            "teams": {"type": "array", "items": {"type": "string"}},
            "version": {
                "type": "string",
                "description": "Make this version (label or digest) the current one.",
            },
        },
    },
    "EnvironmentVersionCreate": {
        "type": "object",
        "required": ["image"],
        "properties": {
            "image": _IMAGE,
            "version": _LABEL,
            "current": {"type": "boolean", "default": True},
            **_RUNTIME,
        },
        "description": "Runtime settings left out are the current version's.",
    },
}

_DETAIL = json_content(ref("EnvironmentDetail"))

OPENAPI_PATHS: dict[str, Any] = {
    "/environments": {
        "get": {
            "summary": "The environments this user may launch",
            "operationId": "listEnvironments",
            "tags": ["environments"],
            "description": "Enabled, not retired, and offered to one of the user's teams (or "
            "to everyone). `?all=1` lists every environment, for admins.",
            "parameters": [
                {
                    "name": "all",
                    "in": "query",
                    "required": False,
                    "schema": {"enum": ["0", "1", "true", "false"]},
                }
            ],
            "responses": {
                "200": json_content({"type": "array", "items": ref("Environment")}),
                **errors(401, 403),
            },
        }
    },
    "/environments/{name}": {
        "parameters": [_NAME_PARAM],
        "get": {
            "summary": "One environment with every version",
            "operationId": "getEnvironment",
            "tags": ["environments"],
            "responses": {"200": _DETAIL, **errors(400, 401, 403, 404)},
        },
        "post": {
            "summary": "Create an environment from an image on the engine (admin)",
            "operationId": "createEnvironment",
            "tags": ["environments"],
            "requestBody": json_body(ref("EnvironmentCreate"), required=True),
            "responses": {
                "201": json_content(ref("EnvironmentDetail"), "Created."),
                **errors(400, 401, 403, 409, 503),
            },
        },
        "patch": {
            "summary": "Change an environment: description, resources, state, teams, version",
            "operationId": "changeEnvironment",
            "tags": ["environments"],
            "requestBody": json_body(ref("EnvironmentChange")),
            "responses": {"200": _DETAIL, **errors(400, 401, 403, 404, 503)},
        },
    },
    "/environments/{name}/versions": {
        "parameters": [_NAME_PARAM],
        "post": {
            "summary": "Add a version from another image on the engine (admin)",
            "operationId": "addEnvironmentVersion",
            "tags": ["environments"],
            "requestBody": json_body(ref("EnvironmentVersionCreate"), required=True),
            "responses": {
                "201": json_content(ref("EnvironmentDetail"), "Added."),
                **errors(400, 401, 403, 404, 409, 503),
            },
        },
    },
}
