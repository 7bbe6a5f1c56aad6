"""FakeSpectrometer: a stand-in for `isic_drivers.obp.spectrometer.ObpSpectrometer`, in this process.

For the Station's in-process tests, which hand the station its parts: the real spectrometer needs the
emulator on a pseudo-terminal (the end-to-end tests use it). What it follows of the real driver:
- counts are the virtual lab's (`isic_drivers.lab.instrument`: dark offset, lamp, shot and read noise,
  clipped at the ADC maximum) for what is under the probe (`scene`: "dark", "white" or "sample");
- `raw_spectrum()` is one scan, uint16 (the OBP wire's type); `coadd(n)` the float64 mean of n scans,
  co-added on the host as `ObpSpectrometer` does when the firmware NACKs "scans to average"
  (`averaging_supported` False);
- every failure is a DeviceError (the driver raises ObpError, a DeviceError), here on demand: `fail(message)`
  makes each request fail until `recover()`;
- `temperature_c()` is the sensor's reading, `room_c` (None: firmware without a sensor, as the driver answers
  when the instrument NACKs the temperature messages);
- `transport` counts its opens (`TransportStats.opens`), which the Acquirer uses to prepare the instrument
  again after a reopen; `health()` has the keys `SerialTransport.health()` gives.
"""

from dataclasses import asdict
from typing import Any, Dict, Optional

import numpy as np

from fakes.measurement import reflectance
from isic_common.errors import DeviceError
from isic_drivers.lab.instrument import InstrumentModel, dark_counts, raw_counts, white_counts
from isic_drivers.obp.transport import TransportStats


class FakeLink:
    """The transport side: a port name, open/close, and the open count the Acquirer reads."""

    def __init__(self, port: str = "fake:spectrometer") -> None:
        self.port = port
        self.stats = TransportStats()
        self._open = False
        self.last_error = ""

    @property
    def is_open(self) -> bool:
        return self._open

    def open(self, timeout_s: Optional[float] = None) -> None:
        self._open = True
        self.stats.opens += 1

    def close(self) -> None:
        self._open = False


class FakeSpectrometer:
    """The virtual lab's instrument behind ObpSpectrometer's interface (see the module docstring)."""

    def __init__(self, seed: int = 0, instrument: Optional[InstrumentModel] = None) -> None:
        self.instrument = instrument or InstrumentModel()
        self.transport = FakeLink()
        self.averaging_supported: Optional[bool] = False
        self.full_scale_counts = float(self.instrument.adc_max)
        self.integration_us = self.instrument.default_integration_us
        self.scene = "sample"
        self.spectra_read = 0
        self._rng = np.random.default_rng(seed)
        self._sample = reflectance(np.random.default_rng(seed + 1), self.instrument.wavelengths_nm)
        self._failure: Optional[str] = None
        self.room_c: Optional[float] = 22.0

    def fail(self, message: str) -> None:
        """From now on every request raises DeviceError(message), as a lost or silent instrument does."""
        self._failure = message

    def recover(self) -> None:
        self._failure = None

    def _request(self) -> None:
        if self._failure is not None:
            self.transport.last_error = self._failure
            raise DeviceError(self._failure)
        if not self.transport.is_open:
            raise DeviceError(f"{self.transport.port} is not open")

    def set_integration_time_us(self, microseconds: int) -> None:
        self._request()
        self.integration_us = int(microseconds)

    def integration_time_us(self) -> int:
        self._request()
        return self.integration_us

    def serial_number(self) -> str:
        self._request()
        return self.instrument.serial

    def wavelengths(self, pixel_count: Optional[int] = None) -> np.ndarray:
        self._request()
        return self.instrument.wavelengths_nm

    def raw_spectrum(self) -> np.ndarray:
        self._request()
        self.spectra_read += 1
        if self.scene == "dark":
            return dark_counts(self.instrument, self.integration_us, self._rng)
        if self.scene == "white":
            return white_counts(self.instrument, self.integration_us, self._rng)
        return raw_counts(self.instrument, self._sample, self.integration_us, self._rng)

    def coadd(self, scans: int) -> np.ndarray:
        if scans < 1:
            raise ValueError(f"co-adding needs at least one scan, got {scans}")
        return np.mean([self.raw_spectrum().astype(np.float64) for _ in range(scans)], axis=0)

    def temperature_c(self, sensor: int = 0) -> Optional[float]:
        self._request()
        return self.room_c if sensor == 0 else None

    def health(self) -> Dict[str, Any]:
        figures: Dict[str, Any] = asdict(self.transport.stats)
        figures.update(port=self.transport.port, open=self.transport.is_open, last_error=self.transport.last_error,
                       retried_requests=0, stale_replies=0)
        return figures
