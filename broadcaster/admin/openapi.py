"""The admin API's OpenAPI 3.1 description, served at `/openapi.json` (docs/admin.md)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from broadcaster import __version__
from broadcaster.admin.answers import CorrectionCreated, NoticeCreated, Problem
from broadcaster.admin.requests import IDEMPOTENCY_HEADER
from broadcaster.operator import CorrectionRequest, NoticeRequest


def _schemas() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for model in (NoticeRequest, CorrectionRequest, NoticeCreated, CorrectionCreated, Problem):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        out.update(schema.pop("$defs", {}))
        out[model.__name__] = schema
    return out


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json_content(schema: Mapping[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": dict(schema)}}}


def openapi_document(public: frozenset[str]) -> dict[str, Any]:
    """The API's OpenAPI 3.1 description; `public` names the endpoints served without a token."""
    problem = _json_content(_ref("Problem"))
    refused = {
        "401": {"description": "no valid bearer token (the same answer whatever is wrong)", **problem},
        "429": {"description": "too many failed authentications from this address; see Retry-After", **problem},
    }

    def operation(path: str, summary: str, responses: dict[str, Any], **more: Any) -> dict[str, Any]:
        if path in public:
            return {"summary": summary, "security": [], **more, "responses": responses}
        return {"summary": summary, "security": [{"bearer": []}], **more, "responses": {**responses, **refused}}

    health = {"type": "object", "description": "healthy, mqtt.connected, feeds[], outbox{channel: depth},"
                                               " database.ok, database.sync_running_seconds, role (leader or standby),"
                                               " instance"}
    key = {"name": IDEMPOTENCY_HEADER, "in": "header", "required": False,
           "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"},
           "description": "a retry with the same key and body gets the first answer for 24 h (Idempotent-Replayed:"
                          " true); the same key with another body gets 422 idempotency_key_reused"}
    paths = {
        "/v1/health": {"get": operation(
            "/v1/health", "Health: every feed fresh and the broker connected",
            {"200": {"description": "healthy", **_json_content(health)},
             "503": {"description": "a feed is failing or stale, the broker is unreachable, or the database is"
                                    " in doubt or did not answer",
                     **_json_content(health)}})},
        "/metrics": {"get": operation(
            "/metrics", "Prometheus metrics (text exposition format)",
            {"200": {"description": "the metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}})},
        "/openapi.json": {"get": operation(
            "/openapi.json", "This description", {"200": {"description": "OpenAPI 3.1", **_json_content({})}})},
        "/v1/status": {"get": operation(
            "/v1/status", "Feeds with their errors, the broker link, the outbox per channel and status, parked posts",
            {"200": {"description": "the status", **_json_content({"type": "object"})}})},
        "/v1/notices": {"post": operation(
            "/v1/notices", "Issue an operator notice on every channel; answers once it is committed to the outbox",
            {"201": {"description": "committed", **_json_content(_ref("NoticeCreated"))},
             "400": {"description": "the body is not JSON, or the Idempotency-Key is malformed", **problem},
             "413": {"description": "the body is too large", **problem},
             "422": {"description": "invalid fields, each named; or an Idempotency-Key reused with another body",
                     **problem},
             "503": {"description": "the database could not commit it, or (a standby) no leader carried it out"
                                    " in time", **problem}},
            parameters=[key], requestBody={"required": True, **_json_content(_ref("NoticeRequest"))})},
        "/v1/notices/{notice_id}/corrections": {"post": operation(
            "corrections", "Correct an earlier notice everywhere it went; answers once it is committed",
            {"201": {"description": "committed", **_json_content(_ref("CorrectionCreated"))},
             "400": {"description": "the body is not JSON, or the Idempotency-Key is malformed", **problem},
             "404": {"description": "no such notice was ever issued", **problem},
             "413": {"description": "the body is too large", **problem},
             "422": {"description": "invalid fields, each named; or an Idempotency-Key reused with another body",
                     **problem},
             "503": {"description": "the database could not commit it, or (a standby) no leader carried it out"
                                    " in time", **problem}},
            parameters=[{"name": "notice_id", "in": "path", "required": True, "schema": {"type": "string"},
                         "description": "e.g. alert-A-L2 (from the notice stream, /v1/status or POST /v1/notices)"},
                        key],
            requestBody={"required": True, **_json_content(_ref("CorrectionRequest"))})},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "broadcaster admin API", "version": __version__,
                 "description": "Operator notices and corrections, health, status and metrics (docs/admin.md)."},
        "paths": paths,
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "a token from the config's [admin] tokens"}},
        },
    }
