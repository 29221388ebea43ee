"""CRC32C: the hardware and the table implementation agree with the standard and each other."""

import pytest
from hypothesis import given
from hypothesis import strategies as st
from keyval._wal_cffi import lib


def test_standard_check_value():
    assert lib.kv_crc32c(0, b"123456789", 9) == 0xE3069283
    assert lib.kv_crc32c_sw(0, b"123456789", 9) == 0xE3069283


def test_hardware_path_matches_when_the_cpu_has_it():
    if lib.kv_crc32c_hw_available():
        assert lib.kv_crc32c_hw(0, b"123456789", 9) == 0xE3069283
    else:
        assert lib.kv_crc32c_hw(0, b"123456789", 9) == -1


@given(st.binary(max_size=3000), st.integers(0, 7))
def test_implementations_agree_on_any_input_and_alignment(data, skew):
    buf = b"\0" * skew + data
    from keyval._wal_cffi import ffi

    p = ffi.from_buffer(buf) + skew
    sw = lib.kv_crc32c_sw(0, p, len(data))
    assert lib.kv_crc32c(0, p, len(data)) == sw
    if lib.kv_crc32c_hw_available():
        assert lib.kv_crc32c_hw(0, p, len(data)) == sw


@given(st.binary(max_size=500), st.binary(max_size=500))
def test_crc_can_be_continued_across_pieces(a, b):
    assert lib.kv_crc32c(lib.kv_crc32c(0, a, len(a)), b, len(b)) == lib.kv_crc32c(
        0, a + b, len(a + b)
    )


@pytest.mark.parametrize("size", [95, 96, 97, 191, 767, 768, 769, 2400, 65536 + 20])
def test_implementations_agree_around_the_interleaved_block_sizes(size):
    # The hardware path runs three streams over blocks of 3x32 and 3x256 bytes and joins
    # them: lengths just below, at and above those multiples take each branch.
    data = bytes((i * 131 + size) % 251 for i in range(size))
    sw = lib.kv_crc32c_sw(0, data, size)
    assert lib.kv_crc32c(0, data, size) == sw
    if lib.kv_crc32c_hw_available():
        assert lib.kv_crc32c_hw(0, data, size) == sw
