"""The station's MQTT commands: one object over the parts they act on, one method per command.

`CommandHandlers` is given what the commands touch - the pipeline that runs `measure` and
`calibrate` on the acquisition thread (`JobRunner`), the model slot (`reload_model`), the lot
(`set_lot`) and the station's status document - never the Station itself. The method named after a
command is its handler; the command names are the registry's (`isic_station.messaging.commands.COMMAND_NAMES`,
one per `command_<name>.schema.json`), and `handlers()` refuses a command without its method, so a
new command is its schema file and its method here (ARCHITECTURE.md, "Adding a command").
"""

import logging
import threading
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Union

from isic_common.errors import StationError
from isic_station.daemon.lot_store import LotStore
from isic_station.daemon.model_slot import ModelSlot
from isic_station.daemon.pipeline import CalibrateJob, MeasureJob, Pipeline, PipelineBusy
from isic_station.daemon.spec_check import InvalidLotSpec, LotSpec, LotSummary
from isic_station.manifest import Manifest
from isic_station.messaging.commands import COMMAND_NAMES, CommandError, CommandHandler
from isic_station.messaging.results import utc_iso

log = logging.getLogger(__name__)

# The longest a `measure` or `calibrate` command waits for its answer (several co-added scans,
# frames, inference; a spectrometer that is reconnecting).
COMMAND_TIMEOUT_S = 30.0

Job = Union[MeasureJob, CalibrateJob]


@dataclass
class LotState:
    """The lot under the probe: its declared spec and running summary once `set_lot` gave one, else only
    the configured lot id (`station.lot`)."""

    lot_id: Optional[str] = None
    spec: Optional[LotSpec] = None
    summary: Optional[LotSummary] = None
    store: Optional[LotStore] = None   # where the summary is kept across a restart

    def declare(self, spec: LotSpec) -> None:
        """Results are checked against `spec` from now on, and summed up in a new summary."""
        self.summary = LotSummary(spec, utc_iso())
        self.spec, self.lot_id = spec, spec.lot_id
        self.keep()

    def restore(self) -> None:
        """The lot under test before the restart, with its summary so far (from the store)."""
        summary = self.store.load() if self.store is not None else None
        if summary is not None:
            self.summary, self.spec, self.lot_id = summary, summary.spec, summary.spec.lot_id
            log.info("lot %s restored: %d result(s) since %s", summary.spec.lot_id, summary.n, summary.since)

    def keep(self) -> None:
        """Store the summary after a change; a store that takes no writes is logged, not fatal."""
        if self.store is None or self.summary is None:
            return
        try:
            self.store.save(self.summary)
        except OSError as exc:
            log.error("lot %s: its summary cannot be kept in %s (%s); a restart would start it again",
                      self.summary.spec.lot_id, self.store.path, exc)

    def to_dict(self) -> Dict[str, Any]:
        return self.spec.to_dict() if self.spec is not None else {"lot_id": self.lot_id}


class JobRunner:
    """Hands a job to the pipeline once start-up has finished, and waits for its answer."""

    def __init__(self, timeout_s: float = COMMAND_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s
        self._pipeline: Optional[Pipeline] = None
        self._running = threading.Event()

    def started(self, pipeline: Pipeline) -> None:
        """The pipeline runs: commands waiting for start-up may go on."""
        self._pipeline = pipeline
        self._running.set()

    def pipeline(self) -> Pipeline:
        """The pipeline, once start-up has finished (a command that arrives during start-up waits for it)."""
        if not self._running.wait(self.timeout_s) or self._pipeline is None:
            raise CommandError(f"the station did not finish starting within {self.timeout_s:.0f} s")
        return self._pipeline

    def run(self, job: Job, what: str) -> Dict[str, Any]:
        """The job's answer; CommandError naming `what` when the pipeline is busy, the job fails or times out."""
        pipeline = self.pipeline()
        try:
            future = pipeline.submit(job)
        except PipelineBusy as exc:
            raise CommandError(f"station busy: {exc}") from None
        try:
            return future.result(timeout=self.timeout_s)
        except StationError as exc:
            raise CommandError(f"{what} failed: {exc}") from None
        except FutureTimeout:  # not the builtin TimeoutError before Python 3.11
            raise CommandError(f"{what} did not finish within {self.timeout_s:.0f} s") from None


class CommandHandlers:
    """The handlers of every command (see the module docstring); they run on the router's worker thread."""

    def __init__(self, jobs: JobRunner, model: ModelSlot, lot: LotState,
                 model_loaded: Callable[[Manifest], None], status: Callable[[Pipeline], Dict[str, Any]]) -> None:
        self._jobs = jobs
        self._model = model
        self._lot = lot
        self._model_loaded = model_loaded
        self._status = status

    def handlers(self) -> Dict[str, CommandHandler]:
        """Every command of the registry -> its method; ValueError naming a command that has none."""
        missing = [name for name in COMMAND_NAMES if not callable(getattr(self, name, None))]
        if missing:
            raise ValueError(f"command(s) {missing} have a schema but no handler method in {type(self).__name__}")
        return {name: getattr(self, name) for name in COMMAND_NAMES}

    def measure(self, payload: Dict[str, Any]) -> Dict[str, Any]:
        """Take one measurement now (optionally for a named sample) and answer with its result's sequence."""
        return self._jobs.run(MeasureJob(origin="command", sample_id=payload.get("sample_id")), "measurement")

    def calibrate(self, payload: Dict[str, Any]) -> Dict[str, Any]:
        """Take a dark, white or wavelength reference on the acquisition thread."""
        return self._jobs.run(CalibrateJob(payload["reference"]), f"{payload['reference']} calibration")

    def set_lot(self, payload: Dict[str, Any]) -> Dict[str, Any]:
        """Check results against this lot's declared composition from now on."""
        try:
            spec = LotSpec.from_dict(payload, known_fibres=self._model.manifest.fibres)
        except InvalidLotSpec as exc:
            raise CommandError(str(exc)) from None
        self._lot.declare(spec)
        log.info("lot %s: declared %s, tolerance %g pp", spec.lot_id, spec.composition, spec.tolerance_pp)
        return spec.to_dict()

    def reload_model(self, payload: Dict[str, Any]) -> Dict[str, Any]:
        """Load the configured model again (after an update); the old one keeps running if the new one fails."""
        try:
            predictor = self._model.load()
        except StationError as exc:
            raise CommandError(f"model not reloaded, the previous one keeps running: {exc}") from None
        self._model_loaded(predictor.manifest)
        return {"model": predictor.manifest.identity(), "backend": predictor.backend.name,
                "fibres": list(predictor.manifest.fibres)}

    def status(self, payload: Dict[str, Any]) -> Dict[str, Any]:
        """Mode, lot, model, devices, pipeline counters (skipped, rejected), outbox and time-to-result."""
        return self._status(self._jobs.pipeline())
