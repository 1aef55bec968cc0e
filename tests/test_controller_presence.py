from ari_app.controller.presence import Presence


def test_reported_and_own_channels_make_an_endpoint_in_use() -> None:
    p = Presence()
    assert not p.in_use("1002@t")
    p.report("1002@t", ["X"])
    assert p.in_use("1002@t") and not p.in_use("1003@t")
    assert not p.in_use("1002@t", call_id="X")  # the asking call's own channel does not count
    p.report("1002@t", ["A-l3"])
    assert not p.in_use("1002@t", call_id="A")  # nor a leg it rang
    assert p.in_use("1002@t", call_id="B")
    p.report("1002@t", [])
    p.add_own("1003@t", "A-l2")  # a leg we just originated, before Asterisk reports it
    assert p.in_use("1003@t")
    p.gone("A-l2")
    assert not p.in_use("1003@t")


def test_reset_replaces_everything_reported() -> None:
    p = Presence()
    p.report("1002@t", ["X"])
    p.reset([("1003@t", ["Y"]), ("1004@t", [])])
    assert not p.in_use("1002@t") and p.in_use("1003@t") and not p.in_use("1004@t")


def test_each_node_reports_apart_and_a_lost_node_is_forgotten_whole() -> None:
    p = Presence()
    p.report("1002@t", ["X"])
    p.reset([("1002@t", ["n2-Y"]), ("1003@t", ["n2-Z"])], node="n2")
    p.report("1004@t", ["n3-W"], node="n3")
    assert p.channels("1002@t") == {"X", "n2-Y"}
    p.reset([("1002@t", ["X2"])])  # this node's reconnect leaves the peers' state alone
    assert p.channels("1002@t") == {"X2", "n2-Y"} and p.in_use("1003@t")
    p.report("1003@t", [], node="n2")
    assert not p.in_use("1003@t")
    p.forget("n2")
    assert p.channels("1002@t") == {"X2"} and p.in_use("1004@t")
