"""Agents: a running count of their requests in the rate window, so admitting one request reads no range of rows.

Revision ID: 0005
Revises: 0004

`window_count` is how many of the agent's agent_requests rows are at or after `window_tail` (the oldest counted; NULL
when none). The upgrade counts every row the agent has, from its oldest: that holds the same rule, and the first
admissions after it move the tail past the rows that have left the rate window.
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("agents", sa.Column("window_count", sa.Integer, nullable=False, server_default="0"))
    op.add_column("agents", sa.Column("window_tail", _Timestamp))
    op.execute(
        """
        UPDATE agents SET
            window_count = (SELECT count(*) FROM agent_requests r WHERE r.agent_id = agents.id),
            window_tail = (SELECT min(r.at) FROM agent_requests r WHERE r.agent_id = agents.id)
        """
    )


def downgrade() -> None:
    op.drop_column("agents", "window_tail")
    op.drop_column("agents", "window_count")
