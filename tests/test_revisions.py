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
