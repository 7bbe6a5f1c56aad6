"""I-MR control charts drawn on the server as SVG (matplotlib, Agg): plants are often offline, so
nothing is fetched by the browser but the picture itself."""

import io
import threading
from typing import Optional, Sequence, Set

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend

from isic_plant import spc  # noqa: E402

_DRAW_LOCK = threading.Lock()  # pyplot's state is global: one drawing at a time
MARKERS_UP_TO = 400            # more points than this are drawn as a line only (the file stays small)


def imr_svg(title: str, values: Sequence[float], lim: Optional[spc.Limits], flagged: Set[int],
            declared: Optional[float] = None, tolerance: Optional[float] = None) -> bytes:
    """The individuals chart above the moving-range chart; points that complete a rule violation in red."""
    x = list(range(1, len(values) + 1))
    ranges = spc.moving_ranges(values)
    marker = "o" if len(values) <= MARKERS_UP_TO else None
    with _DRAW_LOCK:
        fig, (ax_i, ax_mr) = plt.subplots(2, 1, figsize=(8, 4.6), sharex=True,
                                          gridspec_kw={"height_ratios": [3, 2]})
        try:
            ax_i.plot(x, values, color="#1f4e79", linewidth=0.8, marker=marker, markersize=3)
            if lim is not None:
                for level, style in ((lim.centre, "-"), (lim.ucl, "--"), (lim.lcl, "--")):
                    ax_i.axhline(level, color="#555555", linestyle=style, linewidth=0.8)
                ax_mr.axhline(lim.mr_mean, color="#555555", linewidth=0.8)
                ax_mr.axhline(lim.mr_ucl, color="#555555", linestyle="--", linewidth=0.8)
            if declared is not None and tolerance is not None:
                ax_i.axhspan(declared - tolerance / 100.0, declared + tolerance / 100.0, color="#2e7d32", alpha=0.08)
            bad = sorted(i for i in flagged if i < len(values))
            if bad:
                ax_i.scatter([x[i] for i in bad], [values[i] for i in bad], color="#c62828", s=14, zorder=3,
                             label="rule violation")
                ax_i.legend(loc="upper right", fontsize=7)
            ax_mr.plot(x[1:], ranges, color="#1f4e79", linewidth=0.8, marker=marker, markersize=2)
            ax_i.set_title(title, fontsize=10)
            ax_i.set_ylabel("fraction")
            ax_mr.set_ylabel("moving range")
            ax_mr.set_xlabel("result (in measurement order)")
            fig.tight_layout()
            out = io.BytesIO()
            fig.savefig(out, format="svg")
        finally:
            plt.close(fig)
    return out.getvalue()
