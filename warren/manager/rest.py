"""REST/JSON API over mutual TLS, a thin adapter over ``ControlService``.

One route table drives both the router and the OpenAPI document, so the two
cannot disagree. Every error is ``{"error": {"code", "message"}}``; input is
validated in full before ``ControlService`` is called, and ``ControlService``
checks again before it proposes anything, so bad input never changes state.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
import logging
import math
import re
import ssl
import tempfile
import time
import types
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from warren.core.codec import from_dict, to_sparse_dict, to_sparse_json
from warren.core.errors import (
    InvalidArgument,
    PermissionDenied,
    Unauthenticated,
    WarrenError,
    safe_message,
)
from warren.core.models import (
    ENV_KEY_RE,
    LABEL_KEY_RE,
    MAX_REPLICAS,
    NAME_RE,
    Availability,
    Node,
    Service,
    ServiceSpec,
    Task,
)
from warren.core.networks import Network, NetworkSpec
from warren.core.validation import bounded, field_limits, show, validate
from warren.manager.compression import MIN_BYTES, PER_REQUEST_LEVEL, accepts_gzip, gzip_bytes
from warren.manager.control import ControlService
from warren.manager.encoded import EncodedObjects
from warren.manager.events import PUBLIC_KINDS, EventBus, Subscription, public_kinds
from warren.manager.metrics import Metrics
from warren.manager.store import EventAction, Kind, StoreEvent
from warren.proto.errors import HTTP_STATUS
from warren.security.tls import identity_from_pem, write_private

log = logging.getLogger(__name__)

API_ROLES = frozenset({"admin", "manager"})
# Often enough that idle proxies keep the stream open and a gone client is noticed.
KEEPALIVE_SECONDS = 15.0
# Long-lived event streams are ended on shutdown; this only bounds stragglers.
SHUTDOWN_TIMEOUT = 5.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CONTROL = web.AppKey("control", ControlService)
BUS = web.AppKey("bus", EventBus)
METRICS = web.AppKey("metrics", Metrics)
# Stored objects' JSON, encoded once per version (services and tasks: nodes
# carry a manager status filled in when read).
ENCODED = web.AppKey("encoded", dict[Kind, EncodedObjects])
# Open event streams, closed on shutdown so it never waits on idle clients.
STREAMS = web.AppKey("streams", set[Subscription])


# -- request bodies (decoded by the strict codec, like the models) -------------


@dataclass(frozen=True)
class ServiceUpdate:
    spec: ServiceSpec
    # 0: update whatever version is current
    version: int = field(default=0, metadata=bounded(minimum=0))

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class ScaleRequest:
    replicas: int = field(metadata=bounded(minimum=0, maximum=MAX_REPLICAS))

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class NodeUpdate:
    availability: Availability | None = None
    label_add: dict[str, str] = field(default_factory=dict)
    label_rm: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        validate(self)


# -- errors ----------------------------------------------------------------------


def error_response(status: int, code: str, message: str) -> web.Response:
    body = {"error": {"code": code, "message": safe_message(message)}}
    return web.json_response(body, status=status)


# aiohttp's own errors (routing, body size) have no Warren error behind them.
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


def _http_code(status: int) -> str:
    return _HTTP_CODES.get(status, "invalid_argument" if status < 500 else "internal")


def _from_http_exception(exc: web.HTTPException) -> web.Response:
    response = error_response(exc.status, _http_code(exc.status), exc.reason)
    if "Allow" in exc.headers:
        response.headers["Allow"] = exc.headers["Allow"]
    return response


# -- middlewares (outermost first) -------------------------------------------------


@web.middleware
async def _timing(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    try:
        return await handler(request)
    finally:
        metrics = request.app.get(METRICS)
        if metrics is not None:
            name = request.match_info.route.name or "unmatched"
            metrics.observe("rest", name, time.perf_counter() - started)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except WarrenError as exc:
        return error_response(HTTP_STATUS.get(exc.code, 500), exc.code, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _from_http_exception(exc)
    except Exception:
        log.exception("REST %s %s failed", request.method, request.path)
        return error_response(500, "internal", "internal error; see the manager's log")


@web.middleware
async def _authorize(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Only admin and manager certificates may use the API (the TLS layer verified them)."""
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        raise Unauthenticated("a client certificate is required")
    identity = identity_from_pem(ssl.DER_cert_to_PEM_cert(der).encode())
    if identity.role not in API_ROLES:
        who = identity.role or "a joining node"
        raise PermissionDenied(f"{who} certificates may not use the REST API")
    if identity.role == "manager":
        _control(request).check_manager_caller(identity.node_id)
    return await handler(request)


# -- input helpers -------------------------------------------------------------------


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


async def _json_object(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        data = json.loads(raw, parse_float=_finite_float, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise InvalidArgument("request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise InvalidArgument("request body must be a JSON object")
    return data


def _require(data: dict[str, Any], *names: str) -> None:
    # The codec would say so too, but as a Python TypeError message.
    missing = [name for name in names if name not in data]
    if missing:
        raise InvalidArgument(f"body: missing field '{missing[0]}'")


def _flag(request: web.Request, name: str) -> bool:
    value = request.query.get(name, "false").lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no", ""):
        return False
    raise InvalidArgument(f"query parameter '{name}' must be true or false, not {show(value)}")


def _kinds(request: web.Request) -> frozenset[Kind]:
    text = request.query.get("kinds", "").strip()
    return public_kinds(text.split(",") if text else [])


def _ok(data: Any, status: int = 200) -> web.Response:
    return _json_body(to_sparse_json(data), status)


def _json_body(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type="application/json")


def _listing(request: web.Request, kind: Kind, objects: list[Any]) -> web.Response:
    body = request.app[ENCODED][kind].array(objects)
    return _large_json(request, body, lambda: gzip_bytes(body, PER_REQUEST_LEVEL))


def _complete_listing(
    request: web.Request, kind: Kind, objects: Callable[[], list[Any]]
) -> web.Response:
    """Every object of ``kind``: the same body while nothing of the kind changes."""
    revision = _control(request).store.revision
    encoded = request.app[ENCODED][kind]
    body = encoded.complete(revision, objects)
    return _large_json(request, body, lambda: encoded.gzipped(body))


def _large_json(request: web.Request, body: bytes, gzipped: Callable[[], bytes]) -> web.Response:
    """A listing's body, gzipped when it is large and the client accepts gzip."""
    if len(body) < MIN_BYTES:
        return _json_body(body)
    if accepts_gzip(request.headers.get("Accept-Encoding", "")):
        response = web.Response(body=gzipped(), content_type="application/json")
        response.headers["Content-Encoding"] = "gzip"
    else:
        response = _json_body(body)
    response.headers["Vary"] = "Accept-Encoding"
    return response


def _control(request: web.Request) -> ControlService:
    return request.app[CONTROL]


# -- handlers ------------------------------------------------------------------------


async def list_services(request: web.Request) -> web.Response:
    return _complete_listing(request, Kind.SERVICE, _control(request).list_services)


async def create_service(request: web.Request) -> web.Response:
    spec = from_dict(ServiceSpec, await _json_object(request), "spec")
    return _ok(await _control(request).create_service(spec), status=201)


async def get_service(request: web.Request) -> web.Response:
    return _ok(_control(request).get_service(request.match_info["id"]))


async def update_service(request: web.Request) -> web.Response:
    data = await _json_object(request)
    _require(data, "spec")
    body = from_dict(ServiceUpdate, data, "body")
    control = _control(request)
    return _ok(await control.update_service(request.match_info["id"], body.spec, body.version))


async def delete_service(request: web.Request) -> web.Response:
    await _control(request).delete_service(request.match_info["id"])
    return web.Response(status=204)


async def scale_service(request: web.Request) -> web.Response:
    data = await _json_object(request)
    _require(data, "replicas")
    body = from_dict(ScaleRequest, data, "body")
    return _ok(await _control(request).scale_service(request.match_info["id"], body.replicas))


async def list_networks(request: web.Request) -> web.Response:
    return _ok(_control(request).list_networks())


async def create_network(request: web.Request) -> web.Response:
    spec = from_dict(NetworkSpec, await _json_object(request), "spec")
    return _ok(await _control(request).create_network(spec), status=201)


async def get_network(request: web.Request) -> web.Response:
    return _ok(_control(request).get_network(request.match_info["id"]))


async def remove_network(request: web.Request) -> web.Response:
    await _control(request).remove_network(request.match_info["id"])
    return web.Response(status=204)


async def list_nodes(request: web.Request) -> web.Response:
    return _ok(_control(request).list_nodes())


async def get_node(request: web.Request) -> web.Response:
    return _ok(_control(request).describe_node(request.match_info["id"]))


async def update_node(request: web.Request) -> web.Response:
    body = from_dict(NodeUpdate, await _json_object(request), "body")
    node = await _control(request).update_node(
        request.match_info["id"], body.availability, body.label_add, list(body.label_rm)
    )
    return _ok(node)


async def remove_node(request: web.Request) -> web.Response:
    force = _flag(request, "force")
    await _control(request).remove_node(request.match_info["id"], force=force)
    return web.Response(status=204)


async def list_tasks(request: web.Request) -> web.Response:
    query = request.query
    service, node = query.get("service", ""), query.get("node", "")
    control = _control(request)
    if not (service or node):
        return _complete_listing(request, Kind.TASK, control.list_tasks)
    return _listing(request, Kind.TASK, control.list_tasks(service, node))


async def get_task(request: web.Request) -> web.Response:
    return _ok(_control(request).get_task(request.match_info["id"]))


def _sse_frame(event: StoreEvent) -> bytes:
    data = {
        "revision": event.revision,
        "action": event.action.value,
        "kind": event.kind.value,
        "timestamp": event.timestamp,
        "object": to_sparse_dict(event.object),
    }
    return f"event: {event.kind}.{event.action}\ndata: {json.dumps(data)}\n\n".encode()


async def _pump(subscription: Subscription, response: web.StreamResponse) -> None:
    while True:
        try:
            async with asyncio.timeout(KEEPALIVE_SECONDS):
                event = await subscription.queue.get()
        except TimeoutError:
            # Also how a vanished client is noticed: the write fails.
            await response.write(b": keepalive\n\n")
            continue
        if event is None:  # closed: overflow or shutdown
            return
        await response.write(_sse_frame(event))


async def stream_events(request: web.Request) -> web.StreamResponse:
    kinds = _kinds(request)
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    streams = request.app[STREAMS]
    subscription = request.app[BUS].subscribe(kinds)
    streams.add(subscription)
    try:
        await response.prepare(request)
        await _pump(subscription, response)
    except ConnectionError:
        pass  # the client went away
    finally:
        streams.discard(subscription)
        subscription.close()
    return response


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


# -- the route table -----------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    name: str
    description: str
    type: str = "string"


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    status: int = 200
    # A component schema name; "[Name]" is an array of it; None: no JSON body.
    response: str | None = None
    body: str | None = None
    query: tuple[Param, ...] = ()
    media: str = "application/json"

    @property
    def name(self) -> str:
        return self.handler.__name__


_OBJECT_REF = "ID, unique ID prefix or name"
_PUBLIC_KINDS = ", ".join(sorted(k.value for k in PUBLIC_KINDS))
_TASK_REF = "ID or unique ID prefix"

ROUTES: tuple[Route, ...] = (
    Route("GET", "/v1/services", list_services, "List services", response="[Service]"),
    Route(
        "POST",
        "/v1/services",
        create_service,
        "Create a service",
        status=201,
        response="Service",
        body="ServiceSpec",
    ),
    Route("GET", "/v1/services/{id}", get_service, "Inspect a service", response="Service"),
    Route(
        "PUT",
        "/v1/services/{id}",
        update_service,
        "Replace a service's spec",
        response="Service",
        body="ServiceUpdate",
    ),
    Route("DELETE", "/v1/services/{id}", delete_service, "Remove a service", status=204),
    Route(
        "POST",
        "/v1/services/{id}/scale",
        scale_service,
        "Set a replicated service's replica count",
        response="Service",
        body="ScaleRequest",
    ),
    Route("GET", "/v1/networks", list_networks, "List networks", response="[Network]"),
    Route(
        "POST",
        "/v1/networks",
        create_network,
        "Create a network (without a subnet: a free one is picked)",
        status=201,
        response="Network",
        body="NetworkSpec",
    ),
    Route("GET", "/v1/networks/{id}", get_network, "Inspect a network", response="Network"),
    Route(
        "DELETE",
        "/v1/networks/{id}",
        remove_network,
        "Remove a network no service uses",
        status=204,
    ),
    Route("GET", "/v1/nodes", list_nodes, "List nodes", response="[Node]"),
    Route("GET", "/v1/nodes/{id}", get_node, "Inspect a node", response="Node"),
    Route(
        "PUT",
        "/v1/nodes/{id}",
        update_node,
        "Change a node's availability or labels",
        response="Node",
        body="NodeUpdate",
    ),
    Route(
        "DELETE",
        "/v1/nodes/{id}",
        remove_node,
        "Remove a worker node",
        status=204,
        query=(Param("force", "Remove even if the node is ready", "boolean"),),
    ),
    Route(
        "GET",
        "/v1/tasks",
        list_tasks,
        "List tasks",
        response="[Task]",
        query=(
            Param("service", f"Only this service's tasks ({_OBJECT_REF})"),
            Param("node", f"Only tasks on this node ({_OBJECT_REF})"),
        ),
    ),
    Route("GET", "/v1/tasks/{id}", get_task, "Inspect a task", response="Task"),
    Route(
        "GET",
        "/v1/events",
        stream_events,
        "Stream store events (Server-Sent Events; `: keepalive` comments every 15 s)",
        response="Event",
        media="text/event-stream",
        query=(Param("kinds", f"Comma-separated kinds: {_PUBLIC_KINDS} (default: all)"),),
    ),
    Route("GET", "/openapi.json", openapi, "This document"),
)


# -- OpenAPI -------------------------------------------------------------------------

# What the API sends and accepts; nested models (Resources, TaskStatus...) follow.
_MODELS: tuple[type[Any], ...] = (
    ServiceSpec,
    Service,
    NetworkSpec,
    Network,
    Node,
    Task,
    ServiceUpdate,
    ScaleRequest,
    NodeUpdate,
)

_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        }
    },
}

_EVENT_SCHEMA = {
    "type": "object",
    "description": "One SSE `data:` line; the `event:` line is `<kind>.<action>`.",
    "properties": {
        "revision": {"type": "integer", "minimum": 1},
        "action": {"type": "string", "enum": [a.value for a in EventAction]},
        "kind": {"type": "string", "enum": sorted(k.value for k in PUBLIC_KINDS)},
        "timestamp": {"type": "number"},
        "object": {
            "type": "object",
            "description": "The Service, Node or Task (fields at their default left out)",
        },
    },
}

_SCALARS = {str: "string", int: "integer", float: "number", bool: "boolean"}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _type_schema(tp: Any, defs: dict[str, Any], limits: Limits) -> dict[str, Any]:
    """The JSON schema of what ``warren.core.codec`` and the models accept for ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return {"anyOf": [_type_schema(inner, defs, limits), {"type": "null"}]}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _ref(_dataclass_schema(tp, defs))
    if origin is tuple:
        item = _type_schema(typing.get_args(tp)[0], defs, limits)
        return {"type": "array", "items": item}
    if origin is dict:
        schema: dict[str, Any] = {
            "type": "object",
            "additionalProperties": _type_schema(typing.get_args(tp)[1], defs, limits),
        }
        if limits.key_pattern is not None or limits.max_length is not None:
            schema["propertyNames"] = _string_limits(limits.max_length, limits.key_pattern)
        return schema
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return {"type": "string", "enum": [m.value for m in tp]}
    schema = {"type": _SCALARS[tp]}
    if tp is str:
        schema.update(_string_limits(limits.max_length, limits.pattern))
    elif tp in (int, float):
        schema.update({k: v for k, v in limits.numbers.items() if v is not None})
    return schema


def _string_limits(max_length: int | None, pattern: re.Pattern[str] | None) -> dict[str, Any]:
    schema: dict[str, Any] = {}
    if max_length is not None:
        schema["maxLength"] = max_length
    if pattern is not None:
        # The models match with fullmatch; JSON Schema patterns search. Not `$`:
        # in Python's regexes (which many tools use) it also matches before a
        # final newline; `(?![\s\S])` is "end of text" in ECMA and Python alike.
        schema["pattern"] = f"^(?:{pattern.pattern})(?![\\s\\S])"
    return schema


@dataclass(frozen=True)
class Limits:
    """What the models enforce on one field, as the OpenAPI document states it."""

    numbers: dict[str, float | None] = field(default_factory=dict)
    max_length: int | None = None
    pattern: re.Pattern[str] | None = None  # the whole string (str fields)
    key_pattern: re.Pattern[str] | None = None  # every key (dict fields)


# Rules the models check in code rather than in field metadata.
_PATTERNS: dict[tuple[str, str], re.Pattern[str]] = {
    ("ServiceSpec", "name"): NAME_RE,
    ("NetworkSpec", "name"): NAME_RE,
}
_KEY_PATTERNS: dict[tuple[str, str], re.Pattern[str]] = {
    ("ContainerSpec", "env"): ENV_KEY_RE,
    ("ServiceSpec", "labels"): LABEL_KEY_RE,
    ("NetworkSpec", "labels"): LABEL_KEY_RE,
    ("Node", "labels"): LABEL_KEY_RE,
    ("NodeUpdate", "label_add"): LABEL_KEY_RE,
}


def _field_limits(cls: type[Any], fld: dataclasses.Field[Any], tp: Any) -> Limits:
    bounds = field_limits(fld.metadata, tp)
    return Limits(
        numbers={"minimum": bounds.get("minimum"), "maximum": bounds.get("maximum")},
        max_length=bounds.get("max_length"),
        pattern=_PATTERNS.get((cls.__name__, fld.name)),
        key_pattern=_KEY_PATTERNS.get((cls.__name__, fld.name)),
    )


def _dataclass_schema(cls: type[Any], defs: dict[str, Any]) -> str:
    name = cls.__name__
    if name not in defs:
        defs[name] = {}  # placeholder first: guards against recursion
        hints = typing.get_type_hints(cls)
        fields = dataclasses.fields(cls)
        required = [
            f.name
            for f in fields
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        properties = {
            f.name: _type_schema(hints[f.name], defs, _field_limits(cls, f, hints[f.name]))
            | _default_schema(f)
            for f in fields
        }
        schema: dict[str, Any] = {
            "type": "object",
            "additionalProperties": False,
            "properties": properties,
        }
        if required:
            schema["required"] = required
        defs[name] = schema
    return name


def _default_schema(fld: dataclasses.Field[Any]) -> dict[str, Any]:
    """A field's default, which responses leave out and requests may too."""
    if fld.default is not dataclasses.MISSING:
        return {"default": to_sparse_dict(fld.default)}
    if fld.default_factory is not dataclasses.MISSING:
        return {"default": to_sparse_dict(fld.default_factory())}
    return {}


def _content(schema_name: str, media: str = "application/json") -> dict[str, Any]:
    if schema_name.startswith("["):
        schema = {"type": "array", "items": _ref(schema_name[1:-1])}
    else:
        schema = _ref(schema_name)
    return {media: {"schema": schema}}


def _parameters(route: Route) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = []
    if "{id}" in route.path:
        params.append(
            {
                "name": "id",
                "in": "path",
                "required": True,
                "description": _TASK_REF if route.path.startswith("/v1/tasks") else _OBJECT_REF,
                "schema": {"type": "string"},
            }
        )
    for param in route.query:
        params.append(
            {
                "name": param.name,
                "in": "query",
                "required": False,
                "description": param.description,
                "schema": {"type": param.type},
            }
        )
    return params


def _success(route: Route) -> dict[str, Any]:
    if route.status == 204:
        return {"description": "Done"}
    if route.response is None:  # free-form JSON (the OpenAPI document itself)
        return {"description": "OK", "content": {route.media: {"schema": {"type": "object"}}}}
    return {"description": "OK", "content": _content(route.response, route.media)}


def _operation(route: Route) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": route.name,
        "summary": route.summary,
        "tags": [route.path.split("/")[2] if route.path.startswith("/v1/") else "meta"],
        "responses": {
            str(route.status): _success(route),
            "default": {"description": "An error", "content": _content("Error")},
        },
    }
    parameters = _parameters(route)
    if parameters:
        operation["parameters"] = parameters
    if route.body is not None:
        operation["requestBody"] = {"required": True, "content": _content(route.body)}
    return operation


_DESCRIPTION = (
    "Every request needs a client certificate issued by the cluster CA with role "
    "admin or manager (TLS client authentication): there is no Authorization header "
    "or API key. Request bodies are at most 1 MiB. Errors are "
    '`{"error": {"code", "message"}}`; a refused request changes nothing. '
    "Responses leave out every field equal to its `default` (at any depth, as "
    "Docker's and Kubernetes' APIs do): a client fills it back."
)


def openapi_document() -> dict[str, Any]:
    """OpenAPI 3.1 for ``ROUTES``; schemas are derived from the models the codec
    decodes, with the limits the models enforce."""
    schemas: dict[str, Any] = {"Error": _ERROR_SCHEMA, "Event": _EVENT_SCHEMA}
    for model in _MODELS:
        _dataclass_schema(model, schemas)
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    return {
        # 3.1: the first version with a mutual-TLS security scheme (and JSON
        # Schema's propertyNames, for label and env keys).
        "openapi": "3.1.0",
        "info": {"title": "Warren manager API", "version": "1", "description": _DESCRIPTION},
        "security": [{"mutualTLS": []}],
        "paths": paths,
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "securitySchemes": {
                "mutualTLS": {
                    "type": "mutualTLS",
                    "description": "A cluster-CA client certificate, role admin or manager",
                }
            },
        },
    }


# -- app and server ------------------------------------------------------------------


class _JsonErrorHandler(web.RequestHandler):
    """Answers what aiohttp refuses before any route runs (oversized headers, a
    malformed request line) in Warren's error shape, not aiohttp's plain text."""

    __slots__ = ()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # aiohttp's own first: it logs, and refuses if a response is under way.
        super().handle_error(request, status, exc, message)
        if status >= 500:
            text = "internal error; see the manager's log"
        else:
            text = f"malformed or oversized HTTP request: {message or 'unreadable'}"
        response = error_response(status, _http_code(status), text)
        response.force_close()
        return response


class _JsonErrorServer(web.Server):
    def __call__(self) -> web.RequestHandler:
        return _JsonErrorHandler(self, loop=self._loop, **self._kwargs)


class _JsonErrorRunner(web.AppRunner):
    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # aiohttp has no option for its protocol class: the app's server is
        # made as usual, then hands out the handler above.
        server.__class__ = _JsonErrorServer
        return server


async def _close_streams(app: web.Application) -> None:
    for subscription in app[STREAMS]:
        subscription.close()


def _follow_writes(
    app: web.Application, control: ControlService, encoded: dict[Kind, EncodedObjects]
) -> None:
    """Tell the listing caches of each write (called by the store after it applies)."""

    def written(events: list[StoreEvent]) -> None:
        for kind in {event.kind for event in events}.intersection(encoded):
            encoded[kind].written()

    async def unfollow(app: web.Application) -> None:
        if followed:  # a runner may be cleaned up twice
            followed.pop()
            control.store.unsubscribe(written)

    followed = [written]
    control.store.subscribe(written)
    app.on_cleanup.append(unfollow)


def build_app(
    control: ControlService, bus: EventBus, metrics: Metrics | None = None
) -> web.Application:
    app = web.Application(middlewares=[_timing, _errors, _authorize])
    app[CONTROL] = control
    app[BUS] = bus
    encoded = {Kind.SERVICE: EncodedObjects(), Kind.TASK: EncodedObjects()}
    app[ENCODED] = encoded
    _follow_writes(app, control, encoded)
    if metrics is not None:
        app[METRICS] = metrics
    streams: set[Subscription] = set()
    app[STREAMS] = streams
    app.on_shutdown.append(_close_streams)
    for route in ROUTES:
        app.router.add_route(route.method, route.path, route.handler, name=route.name)
    return app


async def start_rest(
    app: web.Application, host: str, port: int, ssl_context: ssl.SSLContext
) -> web.AppRunner:
    """Serve ``app`` over TLS; the caller cleans up the runner (``runner.addresses``: ports)."""
    runner = _JsonErrorRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, ssl_context=ssl_context).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


def server_ssl_context(ca_pem: bytes, cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    """TLS 1.2+, client certificates required and verified against the cluster CA."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    try:
        context.load_verify_locations(cadata=ca_pem.decode("ascii"))
        # The ssl module loads a key only from a file: it lives on disk (0600, in
        # a 0700 directory) just for this call.
        with tempfile.TemporaryDirectory(prefix="warren-tls-") as tmp:
            cert_path, key_path = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
            write_private(cert_path, cert_pem)
            write_private(key_path, key_pem)
            context.load_cert_chain(cert_path, key_path)
    except (ssl.SSLError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"invalid TLS credentials: {exc}") from None
    return context
