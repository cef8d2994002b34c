"""RFC 9457 problem details: every error the API returns, in one shape."""

from __future__ import annotations

from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_JSON = "application/problem+json"


class Problem(Exception):
    """Raise from a route to answer with a problem detail."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        errors: list[dict] | None = None,
        headers: dict[str, str] | None = None,
        **extra,
    ):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = errors
        self.headers = headers
        self.extra = extra


def problem_response(status: int, detail: str, errors=None, headers=None, **extra) -> JSONResponse:
    phrase = HTTPStatus(status).phrase
    body = {
        "type": f"https://anyband.dev/problems/{phrase.lower().replace(' ', '-')}",
        "title": phrase,
        "status": status,
        "detail": detail,
        **extra,
    }
    if errors:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(_request: Request, exc: Problem):
        return problem_response(exc.status, exc.detail, exc.errors, exc.headers, **exc.extra)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException):
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        return problem_response(exc.status_code, detail, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        content_type = request.headers.get("content-type", "")
        errors = [_field_error(e, content_type) for e in exc.errors()]
        problems = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return problem_response(422, f"the request is invalid: {problems}", errors)


def _field_error(error: dict, content_type: str = "") -> dict:
    if tuple(error["loc"]) == ("body",) and error["type"] == "model_attributes_type":
        if "json" not in content_type:
            # curl -d without -H 'Content-Type: application/json' sends a form; FastAPI then
            # reports only that the body is not an object.
            sent = content_type.split(";")[0] or "no Content-Type"
            received = f" with Content-Type: application/json, received {sent}"
        else:
            kinds = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
            received = f", received {kinds.get(type(error.get('input')), 'a number')}"
        return {"field": "body", "message": f"expected a JSON object{received}"}
    if error["type"] == "json_invalid":  # its loc is ("body", character offset), not a field
        reason = (error.get("ctx") or {}).get("error", error["msg"])
        at = error["loc"][-1] if isinstance(error["loc"][-1], int) else "?"
        return {
            "field": "body",
            "message": f"not valid JSON ({reason} at character {at}); send a JSON object",
        }
    message = error["msg"]
    if error["type"] == "value_error" and (error.get("ctx") or {}).get("error") is not None:
        message = str(error["ctx"]["error"])  # our validator's words, without "Value error, "
    return {
        "field": ".".join(str(p) for p in error["loc"] if p != "body") or "body",
        "message": message,
    }


PROBLEM_RESPONSES = {
    status: {"description": HTTPStatus(status).phrase, "content": {PROBLEM_JSON: {}}}
    for status in (400, 401, 404, 409, 413, 422)
}
