from ari_app.controller.ids import (
    OurChannel,
    bridge_id_for,
    call_of_bridge,
    call_of_channel,
    leg_channel_id,
    parse_channel_id,
    party_channel_id,
)


def test_leg_and_party_ids_name_their_call_and_read_back() -> None:
    assert leg_channel_id("1700.12", 3) == "1700.12-l3"
    assert party_channel_id("1700.12", 1) == "1700.12-p1"
    assert parse_channel_id("1700.12-l3") == OurChannel("1700.12", "leg", 3)
    assert parse_channel_id("1700.12-p1") == OurChannel("1700.12", "party", 1)
    # A call id may itself contain the separator: the last suffix is the leg.
    assert parse_channel_id("x-l1-l2") == OurChannel("x-l1", "leg", 2)


def test_other_channels_are_not_ours_and_are_their_own_call() -> None:
    for channel_id in ("1700.12", "pbx-play-hold-1002-0-77", "A-l", "A-x3", "-l3"):
        assert parse_channel_id(channel_id) is None, channel_id
    assert call_of_channel("1700.12") == "1700.12"
    assert call_of_channel("1700.12-l3") == "1700.12"


def test_conference_bridges_name_their_call() -> None:
    assert bridge_id_for("1700.12") == "conf-1700.12"
    assert call_of_bridge("conf-1700.12") == "1700.12"
    assert call_of_bridge("ari-test-bridge") is None


def test_stasis_args_say_what_the_channel_is() -> None:
    assert OurChannel("1700.12", "leg", 3).stasis_args == ["leg", "1700.12", "3"]
