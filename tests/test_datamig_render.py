"""``status`` for people: the real command's table on an 80-column terminal, every state."""

from __future__ import annotations

import re

import sqlalchemy as sa
from test_datamig_runner import clean_env, cli, write

from deploytools.datamig import ledger, runner

LONG = "backfill_the_denormalised_order_totals_for_every_customer_since_the_beginning"


def build_every_state(tmp_path):
    """A release and a SQLite ledger holding every state of DESIGN §4 at once."""
    root = tmp_path / "root"
    (root / "shared").mkdir(parents=True)
    release = tmp_path / "release"
    folder = release / "migrations"
    folder.mkdir(parents=True)
    settings = runner.Settings(path=folder, root=root, release="20240101120000-abc1234")
    ok = "def run(ctx):\n    pass\n"
    write(folder, f"20200101000000_{LONG}.py", ok)
    write(folder, "202001010002_edited_later.py", ok)
    write(folder, "202001010003_deleted_later.py", ok)
    write(folder, "202001010005_newest.py", ok)
    assert runner.apply(settings).ok
    write(folder, "202001010001_arrived_late.py", ok)  # out of order
    assert runner.apply(settings).ok
    (folder / "202001010002_edited_later.py").write_text(ok + "# edited\n")
    (folder / "202001010003_deleted_later.py").unlink()
    write(
        folder, "202001010006_fails.py", "def run(ctx):\n    raise ValueError('no such column')\n"
    )
    runner.apply(settings)
    write(folder, "202001010007_resumable_backfill.py", ok)
    write(folder, "202001010008_not_yet.py", ok)
    # A batched migration whose runner was killed half way: a running attempt, a checkpoint.
    engine = ledger.create_engine(ledger.ledger_database(None, root))
    with engine.begin() as conn:
        ledger.insert_attempt(
            conn,
            ledger.Attempt(
                "202001010007",
                "resumable_backfill",
                ledger.RUNNING,
                ledger.utcnow(),
                None,
                None,
                "20240101120000-abc1234",
                "host",
            ),
        )
        ledger.save_checkpoint(
            conn,
            ledger.Checkpoint(
                "202001010007",
                0,
                "resumable_backfill",
                "[120000]",
                120000,
                500000,
                95.0,
                ledger.utcnow(),
                "20240101120000-abc1234",
            ),
            exists=False,
        )
    engine.dispose()
    return root, release


def test_status_fits_80_columns_and_shows_every_state(tmp_path):
    root, release = build_every_state(tmp_path)

    answer = cli("status", "--root", str(root), cwd=release, env=clean_env(COLUMNS="80"))

    assert answer.returncode == 0, answer.stderr
    lines = answer.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), "\n".join(lines)
    assert not any(line.endswith(" ") for line in lines), "trailing spaces"
    text = answer.stdout
    assert str(root.resolve() / "shared" / "datamig.sqlite3") in text.replace("\n", "")
    rows = {}
    for line in lines:
        match = re.match(r"│ (\d{12,14}\*?) +│ (\w+) +│", line)
        if match:
            rows[match[1]] = match[2]  # version and state are never cut
    assert rows == {
        "20200101000000": "applied",
        "202001010001*": "applied",
        "202001010002": "changed",
        "202001010003": "missing",
        "202001010005": "applied",
        "202001010006": "failed",
        "202001010007": "interrupted",
        "202001010008": "pending",
    }
    assert "120,000 rows" in text  # progress
    assert "* applied out of order" in text  # the legend explains the marks and states
    assert "interrupted: its runner stopped" in text and "missing: applied, but" in text
    assert "202001010006 fails (release 20240101120000-abc1234): ValueError: no such column" in (
        text.replace("\n", " ")
    )
    assert "3 applied, 1 changed, 1 missing, 1 failed, 1 interrupted, 1 pending; 3 to apply" in text
    # the description wraps rather than widening the table
    assert "backfill the" in text and "beginning" in text


def test_status_on_a_wide_terminal_shows_more_columns(tmp_path):
    root, release = build_every_state(tmp_path)
    narrow = cli("status", "--root", str(root), cwd=release, env=clean_env(COLUMNS="80"))
    wide = cli("status", "--root", str(root), cwd=release, env=clean_env(COLUMNS="160"))
    header = {
        name: next(line for line in answer.stdout.splitlines() if "Version" in line)
        for name, answer in (("narrow", narrow), ("wide", wide))
    }
    for column in ("Version", "State", "Description", "Progress"):
        assert column in header["narrow"]
    for column in ("Release", "Applied at (UTC)", "Duration"):
        assert column in header["wide"] and column not in header["narrow"]
    assert max(len(line) for line in wide.stdout.splitlines()) <= 160


def test_status_json_of_a_resumable_migration(tmp_path):
    root, release = build_every_state(tmp_path)
    import json

    data = json.loads(cli("status", "--json", "--root", str(root), cwd=release).stdout)
    line = next(m for m in data["migrations"] if m["version"] == "202001010007")
    assert line["state"] == "interrupted"
    assert line["progress"]["rows_done"] == 120000 and line["progress"]["last_key"] == [120000]
    assert line["progress"]["eta_s"] == 95.0  # nobody is running it: the time still needed
    assert data["pending"] == 3
    engine = sa.create_engine(f"sqlite:///{root / 'shared' / 'datamig.sqlite3'}")
    with engine.connect() as conn:
        states = conn.execute(sa.text("SELECT status FROM data_migration_attempts")).scalars()
        assert "running" in list(states), "status must not settle anything"
    engine.dispose()
