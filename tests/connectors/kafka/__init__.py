"""Kafka connector tests against a local Kafka-protocol broker."""
