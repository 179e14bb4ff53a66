"""The log decides: rollback targets and cleanup from revisions.jsonl (pure, no hosts)."""

from deploytools.revisions import (
    Revision,
    deploy_order,
    failed_releases,
    parse_revisions,
    releases_to_remove,
    rollback_target,
)


def rev(release, action="deploy", status="succeeded", previous=None):
    return Revision(action, release, previous, "sha", "HEAD", "u", "h", "t", status)


LOG = [rev("a"), rev("b"), rev("c", status="failed"), rev("d")]


def test_rollback_target_is_the_newest_older_succeeded_release():
    assert rollback_target(LOG, "d", {"a", "b", "c", "d"}) == "b"  # c failed
    assert rollback_target(LOG, "b", {"a", "b", "c", "d"}) == "a"
    assert rollback_target(LOG, "a", {"a", "b", "c", "d"}) is None


def test_rollback_target_must_exist_on_every_host():
    assert rollback_target(LOG, "d", {"a", "d"}) == "a"
    assert rollback_target(LOG, "d", {"d"}) is None


def test_rollback_entries_do_not_reorder_releases():
    log = [*LOG, rev("b", action="rollback", previous="d")]
    # current is b after the rollback: going back again reaches a, not d
    assert rollback_target(log, "b", {"a", "b", "d"}) == "a"


def test_a_release_redeployed_after_failing_is_not_failed():
    log = [rev("a"), rev("b", status="failed"), rev("b")]
    assert failed_releases(log) == set()
    assert failed_releases(LOG) == {"c"}


def test_cleanup_keeps_the_newest_and_protected_releases():
    existing = {"a", "b", "c", "d"}
    assert releases_to_remove(LOG, existing, 2, protected=["d", "b"]) == ["a"]
    assert releases_to_remove(LOG, existing, 1, protected=["d", "a"]) == ["b", "c"]


def test_releases_missing_from_the_log_are_oldest_by_id():
    assert deploy_order(LOG, {"0-old", "00-older", "a", "d"}) == ["0-old", "00-older", "a", "d"]


def test_unparsable_lines_are_skipped():
    lines = [rev("a").to_line(), "not json", '{"no": "action"}', "", rev("b").to_line()]
    assert [r.release for r in parse_revisions(lines)] == ["a", "b"]


def test_rollback_target_follows_history_through_rollbacks():
    # deploy A, deploy B, roll back to A, deploy C: the target is A, never the abandoned B
    log = [rev("a"), rev("b"), rev("a", action="rollback", previous="b"), rev("c")]
    assert rollback_target(log, "c", {"a", "b", "c"}) == "a"
    # and cleanup keeping one release besides current never removes the target
    assert "a" not in releases_to_remove(log, {"a", "b", "c"}, 1, protected=["c", "a"])


def test_rolling_back_twice_goes_further_back():
    log = [rev("x"), rev("a"), rev("b"), rev("a", action="rollback", previous="b")]
    assert rollback_target(log, "a", {"x", "a", "b"}) == "x"


def test_a_release_rolled_forward_to_again_is_a_target():
    log = [
        rev("a"),
        rev("b"),
        rev("a", action="rollback", previous="b"),
        rev("b", action="rollback", previous="a"),
        rev("c"),
    ]
    assert rollback_target(log, "c", {"a", "b", "c"}) == "b"


def test_an_interrupted_release_is_never_a_target():
    log = [rev("a"), rev("b", status="failed"), rev("c")]
    assert rollback_target(log, "c", {"a", "b", "c"}) == "a"


def test_ledger_identity_comes_from_the_newest_succeeded_deploy():
    from deploytools.revisions import last_ledger_id

    def with_ledger(release, ledger, at, status="succeeded"):
        return Revision("deploy", release, None, "s", "HEAD", "u", "h", at, status, ledger=ledger)

    log = [with_ledger("a", "L1", "t1"), with_ledger("b", "L2", "t3", "failed"), rev("c")]
    assert last_ledger_id(log) == "L1"
    assert last_ledger_id([*log, with_ledger("d", "L3", "t4")]) == "L3"
    assert last_ledger_id([rev("a")]) is None
    # the extra fields survive a round trip and stay out of lines that do not use them
    line = with_ledger("a", "L1", "t1").to_line()
    assert parse_revisions([line])[0].ledger == "L1"
    assert "ledger" not in rev("a").to_line()
