"""Copy the feature flags from the ``feature_flags`` table into the Redis hash ``feature_flags``.

Each row ``(name, enabled)`` becomes the hash field ``name`` with the value ``"1"`` or ``"0"``,
so the application can read every flag with one HGETALL instead of a database query.

Each flag is also PUBLISHED on the Redis channel ``feature_flags``, once per flag per run, as the
message ``name=1`` or ``name=0`` (e.g. ``2fa_sms=1``), so running application processes can
update their cached flags without polling. The message is a notification, not state: a process
that was not subscribed reads the hash. Running the migration again leaves Redis identical
(HSET overwrites a field with the same value) and publishes every flag once more.

The table can be large, so the rows are streamed in batches of BATCH (``yield_per``: a
server-side cursor on PostgreSQL) and each batch goes to Redis in one round trip of a
non-transactional pipeline: one HSET carrying BATCH fields, and one EVALSHA of a four-line Lua
script that PUBLISHes each flag of the batch on the server. Never one round trip per flag, and
memory bounded by one batch whatever the table's size. (Sending BATCH separate PUBLISH commands
in the same pipeline does the same work but measured about 2x slower: redis-py spends more time
encoding and parsing a thousand commands than Redis spends running them.)

``revert`` deletes exactly the fields it wrote (HDEL by name, batch by batch); other fields of
the hash, written by someone else, stay.
"""

from sqlalchemy import text

REDIS_KEY = "feature_flags"
CHANNEL = "feature_flags"
BATCH = 1000

# Options on the statement, not on ctx.db: Connection.execution_options() would change the
# connection for everything after it in this transaction.
_SELECT_FLAGS = text("SELECT name, enabled FROM feature_flags").execution_options(yield_per=BATCH)

# KEYS[1]: the channel; ARGV: name1, value1, name2, value2, ... -> one "name=value" message each.
_PUBLISH_EACH = """
for i = 1, #ARGV, 2 do
  redis.call('PUBLISH', KEYS[1], ARGV[i] .. '=' .. ARGV[i + 1])
end
"""


def _flag_batches(ctx):
    """Lists of at most BATCH (name, enabled) rows, streamed from the database."""
    yield from ctx.db.execute(_SELECT_FLAGS).partitions(BATCH)


def run(ctx):
    copied = 0
    publish_each = ctx.redis.script_load(_PUBLISH_EACH)  # its sha1, for EVALSHA
    pipe = ctx.redis.pipeline(transaction=False)
    for rows in _flag_batches(ctx):
        flags = {name: "1" if enabled else "0" for name, enabled in rows}
        pipe.hset(REDIS_KEY, mapping=flags)
        pipe.evalsha(publish_each, 1, CHANNEL, *(part for flag in flags.items() for part in flag))
        pipe.execute()
        copied += len(flags)
    ctx.log.info(
        "copied %d feature flags into the Redis hash %s and published them on %s",
        copied,
        REDIS_KEY,
        CHANNEL,
    )


def revert(ctx):
    removed = 0
    pipe = ctx.redis.pipeline(transaction=False)
    for rows in _flag_batches(ctx):
        pipe.hdel(REDIS_KEY, *(name for name, _enabled in rows))
        pipe.execute()
        removed += len(rows)
    ctx.log.info("removed %d feature flags from the Redis hash %s", removed, REDIS_KEY)
