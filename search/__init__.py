"""Answering queries over an indexed home."""
