"""`isic-station bench serial` runs end to end and reports consistent figures (no speed target here)."""

import json
import subprocess
import sys


def test_bench_serial_json_figures():
    command = [sys.executable, "-m", "isic_station.cli", "bench", "serial", "--seconds", "0.3", "--baud",
               "115200", "921600", "--json"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["frame_bytes"] == 576
    assert [row["baud"] for row in report["throughput"]] == [115200, 921600]
    for row in report["throughput"]:
        assert row["line_bytes_per_s"] == row["baud"] / 10
        assert row["reader_frames_per_s"] > 0
        assert abs(row["capacity_multiple"] - row["reader_bytes_per_s"] / row["line_bytes_per_s"]) < 1e-9
    # the paced emulator: the link cannot beat the line's 8N1 limit (a small tolerance for clock granularity)
    assert [row["baud"] for row in report["link"]] == [115200, 921600]
    for row in report["link"]:
        assert row["exchange_bytes"] == 64 + 576
        assert 0 < row["spectra_per_s"] <= 1.02 * row["line_spectra_per_s"]
        assert abs(row["line_efficiency"] - row["spectra_per_s"] / row["line_spectra_per_s"]) < 1e-9
    kinds = {row["garbage"]: row for row in report["resync"]}
    assert set(kinds) == {"random_256_bytes", "truncated_frame", "bad_checksum_frame", "header_claiming_4KiB"}
    assert all(row["found_valid_frame"] for row in report["resync"])
    assert kinds["bad_checksum_frame"]["extra_bytes"] == 0
    # the long header holds the reader until 4 KiB + header have come: 4160 - 144 garbage - 576 frame
    assert kinds["header_claiming_4KiB"]["extra_bytes"] == 4160 - 144 - 576
