"""HTTP API (FastAPI): `create_app(ApiSettings(database_url=..., plant=...))`."""

from oee_stream.api.app import ApiSettings, create_app

__all__ = ["ApiSettings", "create_app"]
