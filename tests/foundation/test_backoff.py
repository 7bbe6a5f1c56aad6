"""The shared reconnect backoff: doubles per failure, capped, back to the start after a success."""

import pytest

from isic_common.backoff import Backoff


def test_delays_double_up_to_the_cap_and_reset():
    backoff = Backoff(0.5, 3.0)
    assert [backoff.next_delay() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert backoff.failures == 5
    backoff.reset()
    assert backoff.failures == 0
    assert backoff.next_delay() == 0.5


@pytest.mark.parametrize("initial, maximum", [(0.0, 1.0), (2.0, 1.0)])
def test_nonsense_limits_are_refused(initial, maximum):
    with pytest.raises(ValueError, match="backoff"):
        Backoff(initial, maximum)
