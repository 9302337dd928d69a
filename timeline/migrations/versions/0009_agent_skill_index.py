"""Agents by skill, for routing's candidates

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-25 17:30:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        op.f("ix_agent_skills_skill_level"), "agent_skills", ["skill", "level"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_agent_skills_skill_level"), table_name="agent_skills")
