"""Queue samples for the wallboard's charts of the last hours

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25 15:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "queue_samples",
        sa.Column("queue", sa.String(length=64), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("waiting", sa.Integer(), nullable=False),
        sa.Column("longest_wait_seconds", sa.Float(), nullable=False),
        sa.Column("service_level", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("queue", "at", name=op.f("pk_queue_samples")),
    )


def downgrade() -> None:
    op.drop_table("queue_samples")
