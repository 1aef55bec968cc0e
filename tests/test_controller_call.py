from ari_app.controller.call import dial_string


def test_dial_string_targets_one_contact_and_unescapes_realtime_semicolons() -> None:
    assert (
        dial_string("1002@t.example", "sip:1002@127.0.0.1:5062^3Btransport=UDP", None)
        == "PJSIP/1002@t.example/sip:1002@127.0.0.1:5062;transport=UDP"
    )


def test_a_trunk_leg_carries_the_dialed_number() -> None:
    assert (
        dial_string("gw@t.example", "sip:gw@10.0.0.1:5060", "0049301234")
        == "PJSIP/gw@t.example/sip:0049301234@10.0.0.1:5060"
    )
