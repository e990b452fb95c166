"""The API's answers: their models (with the request models of broadcaster.operator, the OpenAPI description's
schemas) and the responses that carry them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict
from starlette.responses import JSONResponse


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NoticeCreated(_Body):
    notice_id: str


class CorrectionCreated(_Body):
    notice_id: str
    version: str


class Problem(_Body):
    """Every error answer: a stable code, a sentence for people and, for 422, each bad field."""

    error: str
    message: str
    errors: list[dict[str, str]] = []


def problem(status: int, error: str, message: str, *, errors: Sequence[Mapping[str, str]] = (),
            headers: Mapping[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": error, "message": message}
    if errors:
        body["errors"] = list(errors)
    return JSONResponse(body, status, headers=dict(headers or {}))


UNAUTHORISED_HEADERS = {"WWW-Authenticate": 'Bearer realm="broadcaster"'}


def unauthorised() -> JSONResponse:
    # The one answer for every authentication failure: nothing in it says what was wrong.
    return problem(401, "unauthorized", "a valid bearer token is required", headers=UNAUTHORISED_HEADERS)


def notice_created(notice_id: str) -> JSONResponse:
    return JSONResponse({"notice_id": notice_id}, 201)


def correction_created(notice_id: str, version: str) -> JSONResponse:
    return JSONResponse({"notice_id": notice_id, "version": version}, 201)
