"""Ingestion and the stored format: settings, images, encoders, database and vector index."""
