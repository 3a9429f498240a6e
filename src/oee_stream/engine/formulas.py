"""Section 2 of OEE-SEMANTICS.md as array formulas over additive quantities.

Everything a window or a roll-up needs is a sum (seconds per class, counts, ideal seconds, stops), so a
roll-up adds these arrays first and applies the formulas once; ratios are never averaged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from oee_stream.engine.plant import MICRO_STOP, PLANNED_STOP, RUNNING, UNKNOWN, UNPLANNED_STOP

F = npt.NDArray[np.float64]

# Columns of the additive feature array (last axis).
SEC0 = 0  # 7 class seconds: 0..6
# IDEAL_STARTUP: the ideal seconds of the start-up rejects, a part of IDEAL_REJECT (already clamped to it per
# machine window by the engine, so roll-ups add consistent parts).
TOTAL, REJECT, INPUT, IDEAL_TOTAL, IDEAL_REJECT, STOPS, IDEAL_STARTUP, WINDOW = 7, 8, 9, 10, 11, 12, 13, 14
N_FEATURES = 15


@dataclass(frozen=True)
class Kpis:
    ppt: F
    run_time: F
    net_run_time: F
    fully_productive: F
    availability: F  # NaN where undefined (serialized as null)
    performance: F
    quality: F
    oee: F
    teep: F
    utilization: F
    coverage: F
    mtbf: F
    mttr: F
    good: F
    weight_yield: F
    losses: F  # (..., 6) six big losses in seconds


def _div(a: F, b: F) -> F:
    out = np.full(np.broadcast(a, b).shape, np.nan)
    np.divide(a, b, out=out, where=b > 0)
    return out


def compute(x: F, *, microstops_as: str = "performance", unknown_policy: str = "include") -> Kpis:
    sec = x[..., SEC0:SEC0 + 7]
    running, planned, unplanned = sec[..., RUNNING], sec[..., PLANNED_STOP], sec[..., UNPLANNED_STOP]
    micro, unknown = sec[..., MICRO_STOP], sec[..., UNKNOWN]
    ppt_incl = running + planned + unplanned + micro + unknown
    ppt = ppt_incl - unknown if unknown_policy == "exclude" else ppt_incl
    run_time = running + micro if microstops_as == "performance" else running
    total, reject = x[..., TOTAL], x[..., REJECT]
    good = total - reject
    net = x[..., IDEAL_TOTAL]
    ideal_reject = x[..., IDEAL_REJECT]
    fully = net - ideal_reject
    availability = _div(run_time, ppt)
    performance = _div(net, run_time)
    quality = _div(good, total)
    # OEE = A x P x Q = net/PPT x Q; written this way it stays defined when run time is 0 but counts
    # arrived at a boundary, and it is 0 (not null) when PPT > 0 and nothing was made.
    oee = np.where(ppt > 0, np.where(total > 0, _div(net, ppt) * np.nan_to_num(quality), 0.0), np.nan)
    window = x[..., WINDOW]
    teep = np.where(ppt > 0, oee * _div(ppt, window), 0.0)
    utilization = _div(ppt, window)
    coverage = np.where(ppt_incl > 0, 1.0 - _div(unknown, ppt_incl), np.nan)
    stops = x[..., STOPS]
    mtbf = _div(run_time, stops)
    mttr = _div(unplanned, stops)
    ideal_startup = x[..., IDEAL_STARTUP]
    losses = np.stack([unplanned, planned, micro, running - net, ideal_reject - ideal_startup, ideal_startup],
                      axis=-1)
    return Kpis(ppt, run_time, net, fully, availability, performance, quality, oee, teep, utilization,
                coverage, mtbf, mttr, good, _div(good, x[..., INPUT]), losses)
