"""The model in use: one predictor (manifest + loaded backend), swapped whole by `reload_model`.

Inference holds the slot while it runs (`using()`), so a reload never closes a backend under a
measurement; the new model is loaded before the old one is let go, so a model that fails to load
leaves the running one in place. A manifest that kept its name and version but changed (other
labels, preprocessing or graph) is refused: results would carry a version that no longer says what
produced them.
"""

import contextlib
import threading
from typing import Iterator, Optional

from isic_common.errors import ModelError
from isic_station.daemon.wiring import ModelLoader
from isic_station.inference.predictor import Predictor
from isic_station.manifest import Manifest


class ModelSlot:
    """Holds the running predictor; `load()` puts the configured model in it (again)."""

    def __init__(self, loader: ModelLoader) -> None:
        self._loader = loader
        self._lock = threading.Lock()
        self._predictor: Optional[Predictor] = None

    @property
    def loaded(self) -> bool:
        return self._predictor is not None

    @property
    def predictor(self) -> Predictor:
        """The running predictor (ModelError before the first `load`)."""
        predictor = self._predictor
        if predictor is None:
            raise ModelError("no model loaded yet")
        return predictor

    @property
    def manifest(self) -> Manifest:
        return self.predictor.manifest

    def load(self) -> Predictor:
        """Load the configured model and make it the running one; the previous one's backend is closed."""
        manifest = self._loader.manifest()
        running = self._predictor.manifest if self._predictor is not None else None
        if running is not None and (running.name, running.version) == (manifest.name, manifest.version) \
                and running.identity() != manifest.identity():
            # A permuted fibre list under the same version would read as another fibre.
            raise ModelError(
                f"model {manifest.name} {manifest.version} changed on disk (manifest sha256 "
                f"{running.sha256[:12]}... -> {manifest.sha256[:12]}..., graph sha256 "
                f"{running.graphs['bimodal'].sha256[:12]}... -> {manifest.graphs['bimodal'].sha256[:12]}...) "
                "without a new version: export it with a new model_version"
            )
        predictor = self._loader.load(manifest)
        with self._lock:
            old, self._predictor = self._predictor, predictor
        if old is not None:
            old.backend.close()
        return predictor

    @contextlib.contextmanager
    def using(self) -> Iterator[Predictor]:
        """The running predictor, held so that no reload closes it until the block ends."""
        with self._lock:
            yield self.predictor

    def close(self) -> None:
        """Close the running backend (at shutdown)."""
        with self._lock:
            predictor, self._predictor = self._predictor, None
        if predictor is not None:
            predictor.backend.close()
