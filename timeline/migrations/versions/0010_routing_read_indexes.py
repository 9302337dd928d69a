"""Indexes for routing's read of its candidates: skills with the agent's id, open tickets
by assignee

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05 11:05:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OPEN = sa.text("status IN ('new', 'open', 'pending')")


def upgrade() -> None:
    op.create_index(
        op.f("ix_agent_skills_skill_level_agent_id"),
        "agent_skills",
        ["skill", "level", "agent_id"],
        unique=False,
    )
    op.drop_index(op.f("ix_agent_skills_skill_level"), table_name="agent_skills")
    op.create_index(
        "ix_tickets_open_assignee",
        "tickets",
        ["assignee_id", "channel"],
        unique=False,
        sqlite_where=_OPEN,
        postgresql_where=_OPEN,
    )


def downgrade() -> None:
    op.drop_index("ix_tickets_open_assignee", table_name="tickets")
    op.create_index(
        op.f("ix_agent_skills_skill_level"), "agent_skills", ["skill", "level"], unique=False
    )
    op.drop_index(op.f("ix_agent_skills_skill_level_agent_id"), table_name="agent_skills")
