"""The benchmarks' correctness checks at tiny sizes, so `make test` proves the scripts still run.

No timings are asserted here: the benchmarks print them (benchmarks/*.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

pytest.importorskip("pandas")

from benchmarks import engine as bench_engine  # noqa: E402


def _assert_agree(out: dict[str, object], peers: tuple[str, ...]) -> None:
    for peer in peers:
        diff = out[peer]
        assert isinstance(diff, tuple)
        assert bench_engine.agrees(diff), f"{peer} disagrees with the engine: {diff}"


def test_engine_pandas_reference_agree() -> None:
    out = bench_engine.check_agreement(5, 20_000, n_reference=5)
    _assert_agree(out, ("pandas", "reference"))
    # the synthetic data exercises every class the peers compute: not all null
    assert (out["engine"]["OEE"] > 0).any()  # type: ignore[index]


def test_engine_sql_agree(database_url: str) -> None:
    out = bench_engine.check_agreement(5, 20_000, n_reference=1, database_url=database_url)
    assert "sql" in out, "PostgreSQL was not reachable"
    _assert_agree(out, ("pandas", "reference", "sql"))


def test_engine_benchmark_main_runs_tiny() -> None:
    assert bench_engine.main(["--machines", "3", "--samples", "3000", "--repeat", "1", "--no-sql",
                              "--reference", "1"]) == 0


def test_polled_plant_runs_and_rederives_only_for_late_state(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import polled_plant

    polled_plant.run(3, 0.25, 300, 2)
    out = capsys.readouterr().out
    assert "3 machines polled at 1 Hz for 0.25 h: 0.0 M samples" in out
    assert "a late state sample: 2 machine(s) derived again in 2 ticks" in out
    assert "state behind the counts: 0 derived again" in out


def test_warm_start_benchmark_paths_agree_tiny(database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import warm_start

    assert warm_start.main(["--machines", "3", "--hours", "2", "--interval", "10", "--repeat", "1",
                            "--database-url", database_url]) == 0
    out = capsys.readouterr().out
    # 3 machines x 3 signals x 720 polls, all read back by both paths, every window the same
    assert "rows read 6480 / 6480, accepted 6480 / 6480" in out
    assert "-> OK (tolerance" in out and "DIFFERS" not in out
