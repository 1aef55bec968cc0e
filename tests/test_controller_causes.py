import pytest

from ari_app.controller.causes import caller_cause, leg_failure


@pytest.mark.parametrize(
    ("cause", "reason"),
    [(17, "rejected"), (21, "rejected"), (18, "unavailable"), (20, "unavailable"), (1, "unavailable"), (34, "failed")],
)
def test_leg_causes(cause: int, reason: str) -> None:
    assert leg_failure(cause) == reason


def test_caller_causes() -> None:
    assert caller_cause("busy") == 17  # 486
    assert caller_cause("noroute") == 1  # 404
    assert caller_cause("error:forbidden") == 21  # 403
    assert caller_cause("something new") == 34  # 503
