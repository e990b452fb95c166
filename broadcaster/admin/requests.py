"""The writing requests: an operator notice (`POST /v1/notices`) and a correction
(`POST /v1/notices/{id}/corrections`), each carried out at most once per `Idempotency-Key`.

The request models and their checks are broadcaster.operator's (the command line uses the same); this module
reads the body, answers, and records each refusal in the audit log under the token's id.

On a standby (`[ha]`, broadcaster/ha) a valid request is queued in the shared database, as `broadcaster
announce` queues one, and answered once the leader has carried it out; its `Idempotency-Key` row is written in
the transaction that queues it, naming the queued request, so a retry at any instance waits for that one request
instead of making a second.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from broadcaster import desk, idempotency
from broadcaster.admin.answers import correction_created, notice_created, problem
from broadcaster.errors import IdempotencyKeyReused, RequestFailed, RequestInvalid, StoreError, UnknownNotice
from broadcaster.ha.role import Role
from broadcaster.operator import ManualNotice, correction_request, notice_request
from broadcaster.service import Broadcaster
from broadcaster.store import Connection

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
IDEMPOTENCY_HEADER = "Idempotency-Key"

#: How long a standby waits for the leader to carry a queued request out before answering 503.
LEADER_WAIT_SECONDS = 30.0


class Remember:
    """Records the answer to an `Idempotency-Key` inside the transaction that commits the request's notice (a
    leader), or the queued request that will carry it out inside the transaction that queues it (a standby)."""

    def __init__(self, answer: Callable[[Connection, Response], None],
                 queued: Callable[[Connection, int], None]) -> None:
        self.answer = answer
        self.queued = queued

    def __call__(self, conn: Connection, response: Response) -> None:
        self.answer(conn, response)


async def read_json(request: Request) -> Any | Response:
    """The request's body as JSON, or the 413 / 400 answer when it is too large or not JSON."""
    size = 0
    chunks: list[bytes] = []
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return problem(413, "too_large", f"the body exceeds {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    try:
        return orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError as exc:
        return problem(400, "invalid_json", f"the body is not JSON: {exc}")


class OperatorRequests:
    """Announcements and corrections over one running broadcaster."""

    def __init__(self, b: Broadcaster) -> None:
        self.b = b
        self._keyed = asyncio.Lock()  # requests with an Idempotency-Key, one at a time
        self.leader_wait_seconds = LEADER_WAIT_SECONDS

    async def announce(self, request: Request, token_id: str | None) -> Response:
        assert token_id is not None
        return await self._once(request, token_id, "announce", "", self._announce)

    async def correct(self, request: Request, token_id: str | None) -> Response:
        assert token_id is not None
        notice_id = str(request.path_params["notice_id"])

        async def carry_out(body: Any, token: str, remember: Remember | None) -> Response:
            return await self._correct(body, token, notice_id, remember)

        return await self._once(request, token_id, "correct", notice_id, carry_out)

    def _refused(self, action: str, token_id: str, subject: str, errors: Sequence[Mapping[str, str]]) -> Response:
        self.b.desk.audit(f"{action}-refused", token_id, subject, {"errors": list(errors)})
        return problem(422, "invalid_request", "the request has invalid fields", errors=errors)

    async def _once(self, request: Request, token_id: str, action: str, subject: str,
                    handler: Callable[[Any, str, Remember | None], Awaitable[Response]]) -> Response:
        """`handler` on the request's JSON body, at most once per `Idempotency-Key` (docs/admin.md).

        Without the header every request is carried out. With it, the first successful answer is stored with a
        fingerprint of the request and given again, for 24 hours, to every request with the same key and the
        same body (`Idempotent-Replayed: true`); another body gets 422. Keyed requests run one at a time, so
        concurrent duplicates wait for the first and get its answer. The answer is remembered in the transaction
        that commits the notice: a crash can lose neither one without the other, so a retry never makes a second.
        """
        body = await read_json(request)
        if isinstance(body, Response):
            return body
        key = request.headers.get(IDEMPOTENCY_HEADER)
        if key is None:
            return await handler(body, token_id, None)
        if not idempotency.valid_key(key):
            return problem(400, "invalid_idempotency_key", f"{IDEMPOTENCY_HEADER}: {idempotency.KEY_RULE}")
        scope, fingerprint = f"api:{token_id}", idempotency.fingerprint(action, subject, body)
        async with self._keyed:
            earlier = idempotency.recall(self.b.db, scope, key, self.b.clock.now())
            if earlier is not None:
                if earlier.fingerprint != fingerprint:
                    return problem(422, "idempotency_key_reused", str(IdempotencyKeyReused(key)))
                if earlier.body is None and earlier.request_id is not None:
                    queued_id = earlier.request_id  # queued by a standby: its outcome is the answer
                else:
                    return Response(earlier.body, earlier.status or 200, media_type="application/json",
                                    headers={"Idempotent-Replayed": "true"})
            else:

                def answer(conn: Connection, response: Response) -> None:
                    idempotency.remember(conn, scope, key, fingerprint, self.b.clock.now(),
                                         status=response.status_code, body=bytes(response.body))

                def queued(conn: Connection, request_id: int) -> None:
                    idempotency.remember(conn, scope, key, fingerprint, self.b.clock.now(), request_id=request_id)

                return await handler(body, token_id, Remember(answer, queued))
        # Outside the lock: waiting for the leader must not hold up other keyed requests.
        created = notice_created if action == "announce" else functools.partial(correction_created, subject)
        return await self._leaders_answer(queued_id, created, replayed=True)

    def _standby(self) -> bool:
        return self.b.leadership.role is not Role.LEADER

    async def _through_leader(self, action: str, queued: Mapping[str, Any], remember: Remember | None,
                              created: Callable[[str], Response]) -> Response:
        """A standby's way: queue the request in the shared database (with its key's row) and answer with what
        the leader made of it."""
        try:
            with self.b.db.transaction(leader_only=False) as conn:  # a standby's write: not fenced (PostgreSQL)
                request_id = desk.enqueue(conn, action, queued)
                if remember is not None:
                    remember.queued(conn, request_id)
        except StoreError as exc:
            log.error("admin API: %s not queued for the leader: %s", action, exc)
            return problem(503, "store_unavailable", "the request could not be queued; try again")
        return await self._leaders_answer(request_id, created, replayed=False)

    async def _leaders_answer(self, request_id: int, created: Callable[[str], Response], *,
                              replayed: bool) -> Response:
        try:
            result = await desk.wait_for(self.b.db, request_id, self.leader_wait_seconds)
        except RequestFailed as exc:
            status, _, _ = desk.outcome(self.b.db, request_id)
            if status == desk.PENDING:
                return problem(503, "no_leader", f"{exc}; a retry with the same Idempotency-Key waits for it")
            return problem(422, "request_failed", str(exc))
        response = created(result)
        if replayed:
            response.headers["Idempotent-Replayed"] = "true"
        return response

    async def _announce(self, body: Any, token_id: str, remember: Remember | None) -> Response:
        try:
            notice = notice_request(body, network=self.b.network, languages=self.b.config.network.languages,
                                    now=self.b.clock.now())
        except RequestInvalid as exc:
            return self._refused("announce", token_id, "", exc.problems)
        if self._standby():
            queued = {**notice.model_dump(mode="json"), "author": token_id}
            return await self._through_leader("announce", queued, remember, notice_created)
        try:
            notice_id = await self.b.announce(  # once committed, with the answer remembered in that transaction
                ManualNotice.of(notice, author=token_id),
                on_commit=None if remember is None else lambda conn, id_: remember(conn, notice_created(id_)),
            )
        except StoreError as exc:
            log.error("admin API: announce by %s not committed: %s", token_id, exc)
            return problem(503, "store_unavailable", "the notice could not be committed; try again")
        return notice_created(notice_id)

    async def _correct(self, body: Any, token_id: str, notice_id: str, remember: Remember | None) -> Response:
        try:
            correction = correction_request(body, languages=self.b.config.network.languages)
        except RequestInvalid as exc:
            return self._refused("correct", token_id, notice_id, exc.problems)
        if not desk.notice_known(self.b.db, notice_id):
            return problem(404, "unknown_notice", str(UnknownNotice(notice_id)))
        if self._standby():
            queued = {"notice_id": notice_id, "texts": dict(correction.texts), "author": token_id}
            return await self._through_leader("correct", queued, remember,
                                              functools.partial(correction_created, notice_id))
        try:
            answer = None if remember is None else lambda conn, v: remember(conn, correction_created(notice_id, v))
            version = await self.b.correct(notice_id, correction.texts, author=token_id, on_commit=answer)
        except StoreError as exc:
            log.error("admin API: correction of %s by %s not committed: %s", notice_id, token_id, exc)
            return problem(503, "store_unavailable", "the correction could not be committed; try again")
        return correction_created(notice_id, version)
