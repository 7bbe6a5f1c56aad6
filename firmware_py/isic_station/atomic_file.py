"""Small state files written so that a power cut leaves the old version or the new one, never half.

Temporary file in the same directory, fsync, rename over the target, fsync of the directory (the
rename itself is durable only then). Used for the calibration references and the outbox's
sequence high-water mark.
"""

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_json(path: Path, document: Any) -> None:
    """Replace `path` with `document` as JSON, atomically and durably (OSError on failure, nothing left behind)."""
    folder = path.parent
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=str(folder))
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(document, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    fd = os.open(str(folder), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
