"""Retrieval quality on BEIR-format sets, through the real ingestion and query paths."""
