"""push_plan: which AMI actions a batch of outbox rows becomes (pure)."""

from __future__ import annotations

from sorcery_backend.push_plan import (
    AorQualify,
    PendingRow,
    Plan,
    plan_batch,
    qualify_reload_needed,
    whole_cache_is_cheaper,
)


def rows(*specs: tuple[str, str, str]) -> list[PendingRow]:
    return [PendingRow(i + 1, view, oid, op) for i, (view, oid, op) in enumerate(specs)]


def test_an_object_changed_many_times_is_expired_once_and_covers_every_row() -> None:
    batch = rows(*[("ps_auths", "1001@a.example", "changed")] * 100)
    plan = plan_batch(batch)
    assert len(plan.actions) == 1
    action = plan.actions[0]
    assert action.as_dict == {
        "Action": "SorceryMemoryCacheExpireObject",
        "Cache": "res_pjsip/auth",
        "Object": "1001@a.example",
    }
    assert sorted(action.seqs) == list(range(1, 101))


def test_created_changed_and_deleted_all_expire_the_object_in_its_own_cache() -> None:
    plan = plan_batch(
        rows(
            ("ps_endpoints", "1@a", "created"),
            ("ps_aors", "1@a", "changed"),
            ("ps_auths", "1@a~out", "deleted"),
        )
    )
    assert [(a.as_dict["Cache"], a.as_dict["Object"]) for a in plan.actions] == [
        ("res_pjsip/endpoint", "1@a"),
        ("res_pjsip/aor", "1@a"),
        ("res_pjsip/auth", "1@a~out"),
    ]
    assert sorted(plan.seqs) == [1, 2, 3]


def test_identify_is_repopulated_once_and_registrations_reload_their_module_once() -> None:
    plan = plan_batch(
        rows(
            ("ps_endpoint_id_ips", "t1@a", "created"),
            ("ps_endpoint_id_ips", "t2@a", "changed"),
            ("ps_registrations", "t1@a", "changed"),
            ("ps_registrations", "t2@a", "deleted"),
        )
    )
    assert [a.as_dict for a in plan.actions] == [
        {"Action": "SorceryMemoryCachePopulate", "Cache": "res_pjsip/identify"},
        {"Action": "Command", "Command": "module reload res_pjsip_outbound_registration.so"},
    ]
    assert [sorted(a.seqs) for a in plan.actions] == [[1, 2], [3, 4]]


def test_small_batches_never_ask_for_the_cache_size() -> None:
    asked: list[str] = []

    def count(cache: str) -> int:
        asked.append(cache)
        return 0

    plan = plan_batch(rows(*[("ps_endpoints", f"{i}@a", "changed") for i in range(199)]), count)
    assert asked == [] and len(plan.actions) == 199


def test_a_large_set_covering_most_of_the_cache_expires_the_whole_cache() -> None:
    batch = rows(*[("ps_endpoints", f"{i}@a", "changed") for i in range(500)])
    whole = plan_batch(batch, {"res_pjsip/endpoint": 550}.get)
    assert [a.as_dict for a in whole.actions] == [{"Action": "SorceryMemoryCacheExpire", "Cache": "res_pjsip/endpoint"}]
    assert whole.actions[0].objects == 500 and len(whole.seqs) == 500
    # The same 500 out of a cache of 10k: the other 9.5k stay warm, so one action per object.
    per_object = plan_batch(batch, {"res_pjsip/endpoint": 10_000}.get)
    assert len(per_object.actions) == 500
    # Cache size unknown (the node did not say): per object, the safe choice.
    assert len(plan_batch(batch, lambda _c: None).actions) == 500


def test_break_even_rule() -> None:
    assert whole_cache_is_cheaper(100, 100)
    assert whole_cache_is_cheaper(100, 0)  # nothing cached: one action beats a hundred
    assert not whole_cache_is_cheaper(100, 1000)
    assert whole_cache_is_cheaper(3000, 4000, cost_ratio=0.34)
    assert not whole_cache_is_cheaper(3000, 4000, cost_ratio=0.33)


def test_unknown_views_are_reported_not_sent() -> None:
    plan = plan_batch(rows(("ps_something_new", "x", "changed"), ("ps_aors", "1@a", "changed")))
    assert plan.unknown_views == {"ps_something_new"} and len(plan.actions) == 1


def test_a_changed_outbound_auth_reregisters_its_registration_after_the_auth_expiry() -> None:
    plan = plan_batch(
        rows(
            ("ps_auths", "t1@a~out", "changed"),
            ("ps_auths", "t1@a~out", "changed"),
            ("ps_auths", "t2@a~out", "deleted"),
            ("ps_auths", "1001@a", "changed"),
        )
    )
    assert [a.as_dict for a in plan.actions] == [
        {"Action": "SorceryMemoryCacheExpireObject", "Cache": "res_pjsip/auth", "Object": "t1@a~out"},
        {"Action": "SorceryMemoryCacheExpireObject", "Cache": "res_pjsip/auth", "Object": "t2@a~out"},
        {"Action": "SorceryMemoryCacheExpireObject", "Cache": "res_pjsip/auth", "Object": "1001@a"},
        # A module reload keeps a registration whose own row is unchanged: only this sends the new password.
        {"Action": "PJSIPRegister", "Registration": "t1@a"},
    ]
    assert sorted(plan.seqs) == [1, 2, 3, 4]


QUALIFY_AOR = "pjsip reload qualify aor"


def qualify_commands(plan: Plan) -> list[str]:
    return [a.as_dict["Command"] for a in plan.actions if a.as_dict.get("Command", "").startswith(QUALIFY_AOR)]


def test_an_aor_created_with_qualified_static_contacts_is_qualified_after_its_expiry() -> None:
    batch = rows(("ps_aors", "trunk@a", "created"), ("ps_aors", "phone@a", "created"))
    aors = {"trunk@a": AorQualify(30, True), "phone@a": AorQualify(0, False)}
    plan = plan_batch(batch, aors=aors)
    assert [a.as_dict for a in plan.actions] == [
        {"Action": "SorceryMemoryCacheExpireObject", "Cache": "res_pjsip/aor", "Object": "trunk@a"},
        {"Action": "SorceryMemoryCacheExpireObject", "Cache": "res_pjsip/aor", "Object": "phone@a"},
        {"Action": "Command", "Command": f"{QUALIFY_AOR} trunk@a"},
    ]
    assert plan.actions[-1].seqs == ()  # the expiry delivers the rows


def test_which_changes_make_the_qualifier_re_read_an_aor() -> None:
    # Created: only static contacts with a frequency (anything else the qualifier would not qualify;
    # for an AOR it never saw, the command reads every endpoint).
    assert qualify_reload_needed({"created"}, AorQualify(30, True))
    assert not qualify_reload_needed({"created"}, AorQualify(0, True))
    assert not qualify_reload_needed({"created"}, AorQualify(30, False))
    # Changed: qualifying may have been turned off (frequency 0, or the static contacts removed).
    assert qualify_reload_needed({"changed"}, AorQualify(0, True))
    assert qualify_reload_needed({"changed"}, AorQualify(30, False))
    assert not qualify_reload_needed({"changed"}, AorQualify(0, False))
    # Gone by the time the batch is planned: the command could not name it.
    assert not qualify_reload_needed({"created", "deleted"}, None)
    assert not qualify_reload_needed({"deleted"}, None)


def test_a_deleted_aor_gets_no_qualify_command() -> None:
    plan = plan_batch(rows(("ps_aors", "trunk@a", "deleted")), aors={})
    assert qualify_commands(plan) == []
