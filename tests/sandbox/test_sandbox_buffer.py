"""The output cap, property-tested: under the cap output is exact; over it, head and tail
are kept byte for byte with a note saying how much was dropped."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from swe_aem.sandbox.sandbox import _CappedBuffer


@settings(deadline=None)  # the machine is shared; timing is not what is tested
@given(chunks=st.lists(st.binary(max_size=300), max_size=30), limit=st.integers(2, 500))
def test_capped_buffer_keeps_head_and_tail(chunks, limit):
    buf = _CappedBuffer(limit)
    for chunk in chunks:
        buf.add(chunk)
    data = b"".join(chunks)
    text, truncated = buf.text()
    half = limit // 2
    assert truncated == (len(data) > limit)
    if not truncated:
        assert text == data.decode("utf-8", errors="replace")
        return
    head, _, tail = text.partition(f"\n[... output truncated: {len(data) - 2 * half} of {len(data)} bytes omitted ...]\n")
    assert head == data[:half].decode("utf-8", errors="replace")
    assert tail == data[-half:].decode("utf-8", errors="replace")


@settings(deadline=None)
@given(chunks=st.lists(st.binary(max_size=200), max_size=20))
def test_unlimited_buffer_keeps_everything(chunks):
    buf = _CappedBuffer(None)
    for chunk in chunks:
        buf.add(chunk)
    assert buf.text() == (b"".join(chunks).decode("utf-8", errors="replace"), False)
