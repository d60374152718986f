"""Connectors to the outside world: memory, files, SQLite, Kafka, S3, HTTP."""
