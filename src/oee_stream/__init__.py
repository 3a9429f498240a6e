"""oee-stream: real-time OEE for plants."""

__version__ = "0.1.0"
