"""The HTTP admin API: operator notices and corrections, health, status and Prometheus metrics (docs/admin.md).

A Starlette app served by uvicorn in the broadcaster's own event loop, started by `runner.serve` when the
config has an `[admin]` section. One job per module:

- `auth`: the bearer tokens (hashed, compared in constant time) and the throttle on failed authentications;
- `requests`: announcements and corrections, at most once per `Idempotency-Key` (the request models are
  broadcaster.operator's);
- `answers`: the answers' models and the error answer every endpoint gives;
- `openapi`: the OpenAPI 3.1 description;
- `app`: the routes, and health, status and metrics;
- `server`: `AdminServer`, the app on its configured address (with broadcaster.webserver).

Each write is recorded by `Broadcaster.audit` under the token's id; the token itself is never logged, stored or
echoed.
"""

from broadcaster.admin.app import AdminApi
from broadcaster.admin.auth import FailureThrottle, TokenRing
from broadcaster.admin.openapi import openapi_document
from broadcaster.admin.server import AdminServer

__all__ = ["AdminApi", "AdminServer", "FailureThrottle", "TokenRing", "openapi_document"]
