"""The outbox every channel sends through; delivery status on events; bouncing identities

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 14:50:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "outbox_messages",
        sa.Column("id", ID, nullable=False),
        sa.Column("channel", sa.String(length=32), nullable=False),
        sa.Column("idempotency_key", sa.String(length=200), nullable=False),
        sa.Column("ticket_id", ID, nullable=True),
        sa.Column("contact_id", ID, nullable=True),
        sa.Column("event_id", ID, nullable=True),
        sa.Column("recipient", sa.Text(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("provider_id", sa.String(length=500), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["contact_id"], ["contacts.id"], name=op.f("fk_outbox_messages_contact_id_contacts")
        ),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["timeline_events.id"],
            name=op.f("fk_outbox_messages_event_id_timeline_events"),
        ),
        sa.ForeignKeyConstraint(
            ["ticket_id"], ["tickets.id"], name=op.f("fk_outbox_messages_ticket_id_tickets")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox_messages")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_outbox_messages_idempotency_key")),
    )
    with op.batch_alter_table("outbox_messages", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_outbox_messages_event_id"), ["event_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_outbox_messages_status_next_attempt_at"),
            ["status", "next_attempt_at"],
            unique=False,
        )

    with op.batch_alter_table("timeline_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("delivery_status", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("delivery_detail", sa.Text(), nullable=True))

    with op.batch_alter_table("identities", schema=None) as batch_op:
        batch_op.add_column(sa.Column("bouncing_since", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("identities", schema=None) as batch_op:
        batch_op.drop_column("bouncing_since")

    with op.batch_alter_table("timeline_events", schema=None) as batch_op:
        batch_op.drop_column("delivery_detail")
        batch_op.drop_column("delivery_status")

    with op.batch_alter_table("outbox_messages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_outbox_messages_status_next_attempt_at"))
        batch_op.drop_index(batch_op.f("ix_outbox_messages_event_id"))

    op.drop_table("outbox_messages")
