"""The pure-Python framed log peer: it must check what keyval checks, or the comparison lies."""

from __future__ import annotations

import pytest

from bench.peers.framed_log import BUFFER_SIZE, HEADER, FramedLogWriter, read_framed_log
from keyval.errors import CorruptionError


def write_log(path, payloads, type=1):
    with FramedLogWriter(path, sync_each=False) as writer:
        writer.append_many(payloads, type=type)


def test_records_read_back_in_order_across_buffer_boundaries(tmp_path):
    # Records of 64 KiB + header straddle the reader's 1 MiB chunks many times.
    payloads = [bytes([i % 251]) * 65536 for i in range(40)] + [b"", b"tail"]
    write_log(tmp_path / "log", payloads, type=7)

    records = list(read_framed_log(tmp_path / "log"))

    assert (tmp_path / "log").stat().st_size > 2 * BUFFER_SIZE
    assert records == [(i + 1, 7, p) for i, p in enumerate(payloads)]


def test_append_returns_consecutive_sequence_numbers(tmp_path):
    with FramedLogWriter(tmp_path / "log", sync_each=True) as writer:
        assert writer.append(b"a") == 1
        assert writer.append_many([b"b", b"c"]) == (2, 3)
        assert writer.append(b"d") == 4


def test_flipped_payload_bit_is_reported_with_its_record_offset(tmp_path):
    write_log(tmp_path / "log", [b"first", b"second", b"third"])
    data = bytearray((tmp_path / "log").read_bytes())
    second_offset = HEADER.size + len(b"first")
    data[second_offset + HEADER.size] ^= 0x01
    (tmp_path / "log").write_bytes(bytes(data))

    with pytest.raises(CorruptionError) as exc_info:
        list(read_framed_log(tmp_path / "log"))

    assert exc_info.value.offset == second_offset
    assert exc_info.value.path == str(tmp_path / "log")


def test_changed_type_byte_fails_the_crc(tmp_path):
    write_log(tmp_path / "log", [b"payload"], type=1)
    data = bytearray((tmp_path / "log").read_bytes())
    data[HEADER.size - 1] = 2
    (tmp_path / "log").write_bytes(bytes(data))

    with pytest.raises(CorruptionError):
        list(read_framed_log(tmp_path / "log"))


def test_truncated_last_record_is_reported(tmp_path):
    write_log(tmp_path / "log", [b"whole", b"cut short"])
    data = (tmp_path / "log").read_bytes()
    (tmp_path / "log").write_bytes(data[:-3])

    with pytest.raises(CorruptionError) as exc_info:
        list(read_framed_log(tmp_path / "log"))

    assert exc_info.value.offset == HEADER.size + len(b"whole")
