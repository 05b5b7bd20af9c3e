"""PostgreSQL: a notification on channel `orfeas_queue` whenever jobs are queued (inserted, or put back in the queue).

Revision ID: 0006
Revises: 0005

Idle workers LISTEN on the channel (`store.notify.PostgresQueueWatch`) and check the queue at once instead of at their
next poll. The payload is empty, so the notifications of one transaction (a request of many images, a requeue of a
dead worker's batch) reach each listener as one. SQLite needs nothing: its watch reads the file's commit count.
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

CHANNEL = "orfeas_queue"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        f"""
        CREATE OR REPLACE FUNCTION orfeas_notify_queue() RETURNS trigger AS $$
        BEGIN
            PERFORM pg_notify('{CHANNEL}', '');
            RETURN NULL;
        END;
        $$ LANGUAGE plpgsql
        """
    )
    op.execute(
        """
        CREATE TRIGGER jobs_queued AFTER INSERT OR UPDATE OF status ON jobs FOR EACH ROW
        WHEN (NEW.status = 'queued')
        EXECUTE FUNCTION orfeas_notify_queue()
        """
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS jobs_queued ON jobs")
    op.execute("DROP FUNCTION IF EXISTS orfeas_notify_queue()")
