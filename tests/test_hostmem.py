"""swe_aem.hostmem.PhaseMeter: exact per-phase peaks from the kernel's high-water mark."""

import numpy as np

from swe_aem import hostmem

MIB = 1024 ** 2


def _touch(mib: int) -> None:
    block = np.ones(mib * MIB // 8)  # written, so resident
    del block


def test_each_phase_gets_its_own_peak_and_the_run_keeps_its_highest():
    meter = hostmem.PhaseMeter()
    base = hostmem.rss_bytes()
    with meter.phase("big"):
        _touch(300)
    with meter.phase("small"):
        _touch(30)
        with meter.phase("inner"):
            _touch(60)
    if not meter.peaks:  # a kernel whose mark cannot be reset: nothing measured, nothing broken
        return
    assert meter.peaks["big"] - base >= 290 * MIB
    # after the big block was freed, the small phase's peak is its own, not the big one's
    assert meter.peaks["small"] < meter.peaks["big"] - 200 * MIB
    assert meter.peaks["small"] >= meter.peaks["inner"] >= base + 50 * MIB  # outer includes inner
    assert hostmem.peak_rss_bytes() >= meter.peaks["big"]  # the run's mark survives the resets
    assert meter.last["big"] == meter.peaks["big"]


def test_two_meters_nest_over_the_one_kernel_mark():
    """The trainer's phases (train/metrics.py) run inside a bench's: the outer meter's phase
    still sees the peak of an inner one that reset the mark."""
    outer, inner = hostmem.PhaseMeter(), hostmem.PhaseMeter()
    base = hostmem.rss_bytes()
    with outer.phase("step"):
        with inner.phase("update"):
            _touch(200)
        _touch(10)
    if not outer.peaks:
        return
    assert inner.peaks["update"] - base >= 190 * MIB
    assert outer.peaks["step"] >= inner.peaks["update"]
