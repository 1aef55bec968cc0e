"""pbx_base.retry.Backoff: the delay before each retry of every reconnect loop."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pbx_base.retry import Backoff


def test_grows_by_the_factor_up_to_the_cap() -> None:
    b = Backoff(initial=0.2, maximum=1.0, factor=2.0, jitter=0.0)
    assert [b.delay(n) for n in range(5)] == [0.2, 0.4, 0.8, 1.0, 1.0]


def test_a_long_outage_neither_overflows_nor_passes_the_cap() -> None:
    assert Backoff(initial=0.5, maximum=30.0, jitter=0.0).delay(10_000) == 30.0


@given(st.integers(min_value=0, max_value=100), st.floats(min_value=0.0, max_value=0.999))
def test_jitter_only_shortens(attempt: int, rand: float) -> None:
    b = Backoff(initial=0.5, maximum=30.0, jitter=0.5)
    full = Backoff(initial=0.5, maximum=30.0, jitter=0.0).delay(attempt)
    assert full * 0.5 <= b.delay(attempt, rand) <= full
