"""S3 connector tests against a moto server on 127.0.0.1."""
