"""Commands from MQTT: validate the payload, run the station's handler off the paho thread, answer.

A request on `<prefix>/<station>/cmd/<name>` is a JSON object (empty payload = `{}`): its envelope
(`transaction`) is checked against `schemas/command_request.schema.json`, the rest against
`schemas/command_<name>.schema.json`; the answer on `.../cmd/<name>/response` is
`{"status": "ok"|"error", "data", "error", "transaction"}` with the request's `transaction` echoed.
Bad JSON, an invalid payload, an unknown command, a full queue or a handler that raises all get an
error response naming the cause; none of them can stop the link.

Handlers are the station's callables (`CommandRouter(handlers)`); they run one at a time on the
router's worker thread, so a slow `measure` never blocks paho's network loop.
"""

import json
import logging
import queue
import threading
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

from isic_station.schemas import validation_errors

log = logging.getLogger(__name__)

COMMAND_NAMES = ("measure", "set_lot", "calibrate", "reload_model", "status")

# A handler gets the validated payload (without `transaction`) and returns the response's data.
CommandHandler = Callable[[Dict[str, Any]], Optional[Dict[str, Any]]]
Responder = Callable[[str, Dict[str, Any]], None]
Transaction = Union[str, int, None]


class CommandError(Exception):
    """Raised by a handler to refuse a command with a message for the caller (e.g. 'no white reference')."""


def response(
    status: str, data: Optional[Dict[str, Any]], error: Optional[str], transaction: Transaction
) -> Dict[str, Any]:
    """A response document (schema `command_response`)."""
    return {"status": status, "data": data, "error": error, "transaction": transaction}


def _transaction_of(request: Any) -> Transaction:
    if isinstance(request, dict):
        value = request.get("transaction")
        if value is None or isinstance(value, (str, int)) and not isinstance(value, bool):
            return value
    return None


def _not_a_json_number(token: str) -> Any:
    """Python's json accepts NaN/Infinity, which are not JSON: a NaN tolerance would pass every check."""
    raise ValueError(f"{token} is not a JSON number")


def parse_request(name: str, raw: bytes) -> Tuple[Optional[Dict[str, Any]], Transaction, Optional[str]]:
    """(payload without transaction, transaction, error): error names what is wrong, payload is None then."""
    text = raw.decode("utf-8", errors="replace").strip()
    try:
        request = json.loads(text, parse_constant=_not_a_json_number) if text else {}
    except (ValueError, RecursionError) as exc:  # RecursionError: nesting deeper than the parser allows
        return None, None, f"payload is not valid JSON ({exc}); send a JSON object, e.g. {{}}"
    transaction = _transaction_of(request)
    if name not in COMMAND_NAMES:
        return None, transaction, f"unknown command '{name}'; known: {', '.join(COMMAND_NAMES)}"
    if not isinstance(request, dict):
        return None, transaction, f"payload must be a JSON object, got {type(request).__name__}"
    payload = {k: v for k, v in request.items() if k != "transaction"}
    errors = validation_errors(request, "command_request") + validation_errors(payload, f"command_{name}")
    if errors:
        return None, transaction, f"invalid {name} payload: " + "; ".join(errors)
    return payload, transaction, None


class CommandRouter:
    """The station's command handlers by name, and the worker thread that runs them."""

    def __init__(self, handlers: Mapping[str, CommandHandler], queue_size: int = 16) -> None:
        unknown = sorted(set(handlers) - set(COMMAND_NAMES))
        if unknown:
            raise ValueError(f"no such command(s) {unknown}; commands are {list(COMMAND_NAMES)}")
        self._handlers = dict(handlers)
        self._queue = queue.Queue(maxsize=queue_size)  # (name, raw payload) or None to stop
        self._respond: Optional[Responder] = None
        self._thread: Optional[threading.Thread] = None

    def handle(self, name: str, raw: bytes) -> Dict[str, Any]:
        """Validate and run one request now, in the calling thread; always returns a response."""
        payload, transaction, error = parse_request(name, raw)
        if error is not None or payload is None:
            log.warning("command %s refused: %s", name, error)
            return response("error", None, error, transaction)
        handler = self._handlers.get(name)
        if handler is None:
            return response("error", None, f"command '{name}' is not supported by this station", transaction)
        try:
            data = handler(payload)
        except CommandError as exc:
            log.warning("command %s failed: %s", name, exc)
            return response("error", None, str(exc), transaction)
        except Exception as exc:  # a handler bug must not take the link down: answer and log it
            log.exception("command %s raised", name)
            return response("error", None, f"internal error in {name}: {type(exc).__name__}: {exc}", transaction)
        log.info("command %s done", name)
        return response("ok", dict(data or {}), None, transaction)

    def start(self, respond: Responder) -> None:
        """Start the worker; `respond(name, response)` must not block (the link queues the publish)."""
        self._respond = respond
        self._thread = threading.Thread(target=self._work, name="isic-commands", daemon=True)
        self._thread.start()

    def submit(self, name: str, raw: bytes) -> None:
        """Queue a request (called from the paho thread: never blocks); a full queue is answered 'busy'."""
        try:
            self._queue.put_nowait((name, raw))
        except queue.Full:
            _, transaction, _ = parse_request(name, raw)
            log.warning("command %s refused: %d commands already waiting", name, self._queue.maxsize)
            if self._respond is not None:
                self._respond(name, response("error", None, "station busy: too many commands waiting", transaction))

    def stop(self, timeout: float = 5.0) -> None:
        """Let the worker finish the command it is running (up to `timeout`) and end."""
        if self._thread is None:
            return
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            log.warning("command queue still full at stop; not waiting for it")
        self._thread.join(timeout)
        self._thread = None

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            name, raw = item
            try:
                answer = self.handle(name, raw)
            except Exception as exc:  # validation itself failing must not end the worker (commands would pile up)
                log.exception("command %s could not be handled", name)
                answer = response("error", None, f"internal error reading {name}: {type(exc).__name__}", None)
            if self._respond is not None:
                self._respond(name, answer)
