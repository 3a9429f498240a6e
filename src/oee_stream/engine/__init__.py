"""The pure, vectorized OEE engine (no I/O)."""

from oee_stream.engine.core import Engine, EngineStats, IngestReport
from oee_stream.engine.result import KpiResult

__all__ = ["Engine", "EngineStats", "IngestReport", "KpiResult"]
