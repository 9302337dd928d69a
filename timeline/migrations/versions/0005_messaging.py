"""Messaging: SMS opt-outs, earlier texts of edited messages, receipts by provider id

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 15:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("outbox_messages", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_outbox_messages_channel_provider_id"),
            ["channel", "provider_id"],
            unique=False,
        )
    op.create_table(
        "opt_outs",
        sa.Column("identity_id", ID, nullable=False),
        sa.Column("contact_id", ID, nullable=False),
        sa.Column("opted_out_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(length=200), nullable=False),
        sa.ForeignKeyConstraint(
            ["contact_id"], ["contacts.id"], name=op.f("fk_opt_outs_contact_id_contacts")
        ),
        sa.ForeignKeyConstraint(
            ["identity_id"], ["identities.id"], name=op.f("fk_opt_outs_identity_id_identities")
        ),
        sa.PrimaryKeyConstraint("identity_id", name=op.f("pk_opt_outs")),
    )
    with op.batch_alter_table("opt_outs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_opt_outs_contact_id"), ["contact_id"], unique=False)

    op.create_table(
        "event_edits",
        sa.Column("id", ID, nullable=False),
        sa.Column("event_id", ID, nullable=False),
        sa.Column("previous_body", sa.Text(), nullable=False),
        sa.Column("edited_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("journal_id", ID, nullable=True),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["timeline_events.id"],
            name=op.f("fk_event_edits_event_id_timeline_events"),
        ),
        sa.ForeignKeyConstraint(
            ["journal_id"],
            ["inbound_journal.id"],
            name=op.f("fk_event_edits_journal_id_inbound_journal"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_event_edits")),
    )
    with op.batch_alter_table("event_edits", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_event_edits_event_id_edited_at"), ["event_id", "edited_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("event_edits", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_event_edits_event_id_edited_at"))
    op.drop_table("event_edits")
    with op.batch_alter_table("opt_outs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_opt_outs_contact_id"))
    op.drop_table("opt_outs")
    with op.batch_alter_table("outbox_messages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_outbox_messages_channel_provider_id"))
