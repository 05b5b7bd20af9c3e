"""PostgreSQL: a notification on channel `orfeas_jobs` whenever a job's status, progress, stage or error changes.

Revision ID: 0004
Revises: 0003

The payload is the job's id. API processes LISTEN on the channel (`store.notify`) and read a followed job only when
it changed, instead of polling every followed job. A trigger, not the store's writes, sends it, so every writer of
the table (workers of any version, an operator's SQL) is heard. SQLite has no such channel: nothing changes there.
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

CHANNEL = "orfeas_jobs"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        f"""
        CREATE OR REPLACE FUNCTION orfeas_notify_job() RETURNS trigger AS $$
        BEGIN
            PERFORM pg_notify('{CHANNEL}', NEW.id);
            RETURN NULL;
        END;
        $$ LANGUAGE plpgsql
        """
    )
    op.execute(
        """
        CREATE TRIGGER jobs_notify AFTER UPDATE ON jobs FOR EACH ROW
        WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.progress IS DISTINCT FROM NEW.progress
              OR OLD.stage IS DISTINCT FROM NEW.stage OR OLD.error IS DISTINCT FROM NEW.error)
        EXECUTE FUNCTION orfeas_notify_job()
        """
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS jobs_notify ON jobs")
    op.execute("DROP FUNCTION IF EXISTS orfeas_notify_job()")
