"""images.shown_at: the date a photo is browsed under (capture time, else file time), indexed

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Browsing sorts the whole collection by this date, a page at a time: computed per query
    # it cost a sort of every row (1.8 s for a middle page of 100,000 photos); stored and
    # indexed, a page is an index walk.
    op.add_column("images", sa.Column("shown_at", sa.DateTime(), nullable=True))
    op.create_index("ix_images_shown_at", "images", ["shown_at"])
    # The file's local time is Python's to compute (as `indexer.db.shown_date` does for new
    # rows): filled in batches by id.
    from indexer.db import shown_date

    conn = op.get_bind()
    images = sa.table(
        "images",
        sa.column("id", sa.Integer),
        sa.column("taken_at", sa.DateTime),
        sa.column("mtime_ns", sa.BigInteger),
        sa.column("shown_at", sa.DateTime),
    )
    last = 0
    while True:
        rows = conn.execute(
            sa.select(images.c.id, images.c.taken_at, images.c.mtime_ns)
            .where(images.c.id > last)
            .order_by(images.c.id)
            .limit(5000)
        ).all()
        if not rows:
            break
        conn.execute(
            images.update().where(images.c.id == sa.bindparam("row_id")),
            [{"row_id": i, "shown_at": shown_date(t, m)} for i, t, m in rows],
        )
        last = rows[-1][0]


def downgrade() -> None:
    op.drop_index("ix_images_shown_at", table_name="images")
    op.drop_column("images", "shown_at")
