"""Outbound campaigns: saved segments, campaigns, and one recipient row per contact

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-25 17:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_WHEN = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "segments",
        sa.Column("id", _ID, nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("filter", sa.JSON(), nullable=False),
        sa.Column("created_at", _WHEN, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_segments")),
    )
    op.create_table(
        "campaigns",
        sa.Column("id", _ID, nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("channel", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("segment_id", _ID, nullable=True),
        sa.Column("filter", sa.JSON(), nullable=False),
        sa.Column("template", sa.JSON(), nullable=False),
        sa.Column("sender", sa.String(length=320), nullable=True),
        sa.Column("pacing", sa.JSON(), nullable=True),
        sa.Column("quiet_hours", sa.JSON(), nullable=True),
        sa.Column("frequency_cap", sa.JSON(), nullable=True),
        sa.Column("scheduled_at", _WHEN, nullable=True),
        sa.Column("created_at", _WHEN, nullable=False),
        sa.Column("started_at", _WHEN, nullable=True),
        sa.Column("finished_at", _WHEN, nullable=True),
        sa.Column("cursor_contact_id", _ID, nullable=False),
        sa.Column("materialised_at", _WHEN, nullable=True),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        sa.Column("lease_until", _WHEN, nullable=True),
        sa.Column("replies_seen_event_id", _ID, nullable=False),
        sa.ForeignKeyConstraint(
            ["segment_id"], ["segments.id"], name=op.f("fk_campaigns_segment_id_segments")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_campaigns")),
    )
    op.create_index(op.f("ix_campaigns_status"), "campaigns", ["status"])
    op.create_table(
        "campaign_recipients",
        sa.Column("id", _ID, nullable=False),
        sa.Column("campaign_id", _ID, nullable=False),
        sa.Column("contact_id", _ID, nullable=False),
        sa.Column("idempotency_key", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("skip_reason", sa.String(length=32), nullable=True),
        sa.Column("recipient", sa.String(length=320), nullable=True),
        sa.Column("outbox_id", _ID, nullable=True),
        sa.Column("not_before", _WHEN, nullable=False),
        sa.Column("created_at", _WHEN, nullable=False),
        sa.Column("queued_at", _WHEN, nullable=True),
        sa.Column("reply_event_id", _ID, nullable=True),
        sa.Column("replied_at", _WHEN, nullable=True),
        sa.Column("opted_out_at", _WHEN, nullable=True),
        sa.ForeignKeyConstraint(
            ["campaign_id"],
            ["campaigns.id"],
            name=op.f("fk_campaign_recipients_campaign_id_campaigns"),
        ),
        sa.ForeignKeyConstraint(
            ["contact_id"], ["contacts.id"], name=op.f("fk_campaign_recipients_contact_id_contacts")
        ),
        sa.ForeignKeyConstraint(
            ["outbox_id"],
            ["outbox_messages.id"],
            name=op.f("fk_campaign_recipients_outbox_id_outbox_messages"),
        ),
        sa.ForeignKeyConstraint(
            ["reply_event_id"],
            ["timeline_events.id"],
            name=op.f("fk_campaign_recipients_reply_event_id_timeline_events"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_campaign_recipients")),
        sa.UniqueConstraint(
            "campaign_id", "contact_id", name=op.f("uq_campaign_recipients_campaign_id_contact_id")
        ),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_campaign_recipients_idempotency_key")),
    )
    op.create_index(
        op.f("ix_campaign_recipients_campaign_id_status_not_before_id"),
        "campaign_recipients",
        ["campaign_id", "status", "not_before", "id"],
    )
    op.create_index(
        op.f("ix_campaign_recipients_contact_id_queued_at"),
        "campaign_recipients",
        ["contact_id", "queued_at"],
    )
    op.create_index(
        op.f("ix_campaign_recipients_reply_event_id"), "campaign_recipients", ["reply_event_id"]
    )


def downgrade() -> None:
    op.drop_table("campaign_recipients")
    op.drop_table("campaigns")
    op.drop_table("segments")
