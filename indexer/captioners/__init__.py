"""Caption generators that work from stored CLIP embeddings."""
