"""Persistence: schema migrations, the buffered async writer and the read queries."""
