import pytest

from stratum1.refclock.backoff import Backoff


def test_doubles_up_to_the_cap_and_resets():
    b = Backoff(1.0, 8.0)
    assert [b.next_delay() for _ in range(6)] == [1, 2, 4, 8, 8, 8]
    b.reset()
    assert b.next_delay() == 1


def test_rejects_nonsense():
    with pytest.raises(ValueError):
        Backoff(0, 1)
    with pytest.raises(ValueError):
        Backoff(4, 2)
