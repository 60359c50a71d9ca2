"""indexes for the metadata filters of large collections

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A date filter reads `taken_at >= x OR (taken_at IS NULL AND mtime_ns >= y)` (undated
    # photos are dated by their file): with (taken_at, mtime_ns) both halves are index ranges,
    # so SQLite answers it by a union of two range scans instead of reading every row (10M
    # images: a one-month filter read the whole table). It replaces the taken_at index.
    op.create_index("ix_images_taken_mtime", "images", ["taken_at", "mtime_ns"])
    op.drop_index("ix_images_taken_at", table_name="images")
    # `format = x` and `camera_make = x AND camera_model = y` lookups.
    op.create_index("ix_images_format", "images", ["format"])
    op.create_index("ix_images_camera", "images", ["camera_make", "camera_model"])


def downgrade() -> None:
    op.drop_index("ix_images_camera", table_name="images")
    op.drop_index("ix_images_format", table_name="images")
    op.create_index("ix_images_taken_at", "images", ["taken_at"])
    op.drop_index("ix_images_taken_mtime", table_name="images")
