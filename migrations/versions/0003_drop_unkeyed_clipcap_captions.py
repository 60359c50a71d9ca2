"""drop ClipCap captions stored without the CLIP model in their key

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Captions from a vector-based captioner (ClipCap) were keyed `clipcap:<folder name>`, so
    # they did not say which CLIP's vectors they came from, and a bug stored some of them on the
    # wrong photos; good and bad ones cannot be told apart, so all of them go (they are made
    # again on demand). Keys are now `clipcap:<folder>@<model>/<weights>`: the CLIP model key
    # always holds a '/', a folder name never does. Pixel-based captions stay. On SQLite the
    # delete trigger of 0002 removes the rows from captions_fts as well.
    op.execute("DELETE FROM captions WHERE captioner LIKE 'clipcap:%' AND captioner NOT LIKE '%/%'")


def downgrade() -> None:
    # The deleted captions cannot come back (and were not trustworthy); the old code simply
    # finds no caption under its old keys and makes them again.
    pass
