"""The soak runs on the fault suite's bench: its fixtures are shared from there."""

from faults.conftest import make_bench, tiny_model  # noqa: F401  (fixtures, found by pytest by name)
