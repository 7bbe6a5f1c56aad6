"""Commands from MQTT: validate the payload, run the station's handler off the paho thread, answer.

A request on `<prefix>/<station>/cmd/<name>` is a JSON object (empty payload = `{}`): its envelope
(`transaction`) is checked against `schemas/command_request.schema.json`, the rest against
`schemas/command_<name>.schema.json`; the answer on `.../cmd/<name>/response` is
`{"status": "ok"|"error", "data", "error", "transaction"}` with the request's `transaction` echoed.
Bad JSON, an invalid payload, an unknown command, a full queue or a handler that raises all get an
error response naming the cause; none of them can stop the link.

Before anything is parsed, two rules keep one message from doing harm:
- a message with the retain flag is refused (answered, never run): the broker would hand it to the
  station again on every reconnect, and a retained `calibrate` would re-calibrate over fabric. The
  link subscribes with MQTT 5's retain-as-published, so the flag survives on live messages too. An
  empty retained payload is how a user clears a retained topic: it is ignored, not answered;
- a payload over `max_payload_bytes` (64 KiB unless configured) is refused unread.
Error texts in replies and logs quote outside values only as short escaped excerpts (`untrusted`).

Handlers are the station's callables (`CommandRouter(handlers)`, from `command_handlers.CommandHandlers`);
they run one at a time on the router's worker thread, so a slow `measure` never blocks paho's network loop.
"""

import json
import logging
import queue
import threading
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

from isic_station.messaging.untrusted import excerpt
from isic_station.schemas import command_names, validation_errors

log = logging.getLogger(__name__)

# The command registry, read from the schema files (`command_<name>.schema.json`): a command is declared there once.
COMMAND_NAMES = command_names()
DEFAULT_MAX_PAYLOAD_BYTES = 64 * 1024
# An error text is one line for a person: anything longer was echoing what was sent.
MAX_ERROR_CHARS = 400

# A handler gets the validated payload (without `transaction`) and returns the response's data.
CommandHandler = Callable[[Dict[str, Any]], Optional[Dict[str, Any]]]
Responder = Callable[[str, Dict[str, Any]], None]
Transaction = Union[str, int, None]


# `CommandRouter.screen`'s answer for a message that is neither run nor answered.
IGNORED: Dict[str, Any] = {}


class CommandError(Exception):
    """Raised by a handler to refuse a command with a message for the caller (e.g. 'no white reference')."""


def response(
    status: str, data: Optional[Dict[str, Any]], error: Optional[str], transaction: Transaction
) -> Dict[str, Any]:
    """A response document (schema `command_response`); the error text is escaped and kept short."""
    return {"status": status, "data": data, "error": None if error is None else excerpt(error, MAX_ERROR_CHARS),
            "transaction": transaction}


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
        return None, transaction, f"unknown command '{excerpt(name)}'; known: {', '.join(COMMAND_NAMES)}"
    if not isinstance(request, dict):
        return None, transaction, f"payload must be a JSON object, got {type(request).__name__}"
    payload = {k: v for k, v in request.items() if k != "transaction"}
    errors = validation_errors(request, "command_request") + validation_errors(payload, f"command_{name}")
    if errors:
        return None, transaction, f"invalid {name} payload: " + "; ".join(errors)
    return payload, transaction, None


class CommandRouter:
    """The station's command handlers by name, and the worker thread that runs them."""

    def __init__(self, handlers: Mapping[str, CommandHandler], queue_size: int = 16,
                 max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> None:
        unknown = sorted(set(handlers) - set(COMMAND_NAMES))
        if unknown:
            raise ValueError(f"no such command(s) {unknown}; commands are {list(COMMAND_NAMES)}")
        if max_payload_bytes < 1024:
            raise ValueError(f"max_payload_bytes = {max_payload_bytes}: expected at least 1024")
        self._handlers = dict(handlers)
        self.max_payload_bytes = int(max_payload_bytes)
        self._queue = queue.Queue(maxsize=queue_size)  # (name, raw payload) or None to stop
        self._respond: Optional[Responder] = None
        self._thread: Optional[threading.Thread] = None

    def screen(self, name: str, raw: bytes, retained: bool = False) -> Optional[Dict[str, Any]]:
        """What to answer without running: an error response for a retained or oversized message,
        IGNORED for an empty retained payload (a user clearing the topic), None when it may run."""
        shown = excerpt(name)
        if retained and not raw:
            log.info("empty retained message on command %s (a retained command being cleared): ignored", shown)
            return IGNORED
        if len(raw) > self.max_payload_bytes:
            log.warning("command %s refused: %d-byte payload over the %d-byte limit", shown, len(raw),
                        self.max_payload_bytes)
            return response("error", None, f"payload of {len(raw)} bytes is over this station's limit of "
                            f"{self.max_payload_bytes} bytes; not read", None)
        if retained:
            _, transaction, _ = parse_request(name, raw)
            log.warning("command %s refused: it was published with retain (%s)", shown, excerpt(raw))
            return response("error", None, "retained commands are refused, never run (a retained command would "
                            "run again on every reconnect): publish without retain, and clear the retained "
                            "message with an empty retained payload", transaction)
        return None

    def handle(self, name: str, raw: bytes, retained: bool = False) -> Optional[Dict[str, Any]]:
        """Screen, validate and run one request now, in the calling thread; returns the response
        (None only for an ignored empty retained payload)."""
        screened = self.screen(name, raw, retained)
        if screened is not None:
            return None if screened is IGNORED else screened
        payload, transaction, error = parse_request(name, raw)
        if error is not None or payload is None:
            answer = response("error", None, error, transaction)
            log.warning("command %s refused: %s", excerpt(name), answer["error"])
            return answer
        handler = self._handlers.get(name)
        if handler is None:
            return response("error", None, f"command '{name}' is not supported by this station", transaction)
        try:
            data = handler(payload)
        except CommandError as exc:
            answer = response("error", None, str(exc), transaction)
            log.warning("command %s failed: %s", name, answer["error"])
            return answer
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

    def submit(self, name: str, raw: bytes, retained: bool = False) -> None:
        """Queue a request (called from the paho thread: never blocks); a retained or oversized one is
        answered at once without queueing, a full queue is answered 'busy'."""
        screened = self.screen(name, raw, retained)
        if screened is not None:
            if screened is not IGNORED and self._respond is not None:
                self._respond(name, screened)
            return
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
            if self._respond is not None and answer is not None:
                self._respond(name, answer)
