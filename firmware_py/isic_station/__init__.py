"""ISiC station daemon: acquisition, preprocessing, inference, results, outbox, MQTT, health.

Runs on the board (Python 3.8+, aarch64, no torch).
"""

__version__ = "0.1.0"
