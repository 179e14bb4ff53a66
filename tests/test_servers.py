"""The harness itself: every server answers, hosts are distinct, keys are checked."""

import subprocess

import redis
import sqlalchemy


def test_postgres_databases_are_fresh(pg_url):
    engine = sqlalchemy.create_engine(pg_url)
    with engine.connect() as conn:
        tables = conn.execute(
            sqlalchemy.text("select count(*) from pg_tables where schemaname = 'public'")
        ).scalar()
    engine.dispose()
    assert tables == 0


def test_redis_database_is_empty(redis_url):
    client = redis.Redis.from_url(redis_url)
    assert client.ping() and client.dbsize() == 0


def test_three_sshd_hosts_answer_with_their_own_key(ssh_cluster):
    addresses = set()
    for host in ssh_cluster.hosts:
        out = subprocess.run(
            [
                "ssh",
                "-i",
                str(ssh_cluster.client_key),
                "-o",
                "BatchMode=yes",
                "-o",
                f"UserKnownHostsFile={ssh_cluster.known_hosts}",
                "-o",
                "StrictHostKeyChecking=yes",
                "-p",
                str(host.port),
                f"root@{host.address}",
                "echo $SSH_CONNECTION",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        addresses.add(out[2])
    assert addresses == {"127.0.0.1", "127.0.0.2", "127.0.0.3"}
    keys = {line.split()[2] for line in ssh_cluster.known_hosts.read_text().splitlines()}
    assert len(keys) == 3
