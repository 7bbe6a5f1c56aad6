"""The lot under test and its running summary, kept across a station restart (`lot.json` in the state folder).

A plant sets a lot once (`set_lot`) and measures it for hours; a restart (power cut, update, the
watchdog) must neither forget which lot is under test nor start its summary again from zero, or
the lot would be judged on part of its results. The file is replaced atomically after every lot
result and every `set_lot` (`atomic_file.write_json`: the old version or the new one, never half).
A damaged file is moved aside (`lot.json.damaged`) with a warning: the station starts without a
lot rather than not at all, and the next `set_lot` starts a new one.
"""

import json
import logging
import os
from pathlib import Path
from typing import Optional

from isic_station.atomic_file import write_json
from isic_station.daemon.spec_check import LotSummary

log = logging.getLogger(__name__)

FILE_NAME = "lot.json"


class LotStore:
    """`load()` the lot summary kept by the previous run, `save(summary)` after each change."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / FILE_NAME

    def load(self) -> Optional[LotSummary]:
        """The kept summary, or None when there is none (or it was damaged and moved aside)."""
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
            return LotSummary.from_state(doc)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            aside = self.path.with_name(FILE_NAME + ".damaged")
            try:
                os.replace(self.path, aside)
            except OSError:
                aside = self.path
            log.warning("lot state %s cannot be read (%s); moved to %s: no lot is set until the next set_lot",
                        self.path, exc, aside)
            return None

    def save(self, summary: LotSummary) -> None:
        """Keep `summary` (atomically); OSError when the state folder takes no writes."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json(self.path, summary.state())
