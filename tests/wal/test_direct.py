"""csrc/direct.c: synced writes of at most two blocks go through O_DIRECT, rewriting the first
block's earlier bytes from a copy. Whatever mix of direct and buffered writes a log sees (small
records, records across blocks, records bigger than the buffer, batches, truncation,
rotation, reopening), every record must read back as appended, before and after reopening."""

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keyval.wal import WAL

ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(0, 300)),
        st.tuples(st.just("append"), st.integers(3_000, 9_000)),  # across blocks
        st.tuples(st.just("big"), st.integers(20_000, 30_000)),  # bigger than the buffer
        st.tuples(st.just("many"), st.integers(1, 40)),
        st.tuples(st.just("truncate"), st.integers(0, 50)),
        st.tuples(st.just("reopen"), st.sampled_from(["always", "none"])),
    ),
    max_size=60,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops, st.sampled_from([64 * 1024, 50_000]))
def test_every_record_reads_back_whatever_the_mix_of_writes(tmp_path_factory, steps, segment):
    path = tmp_path_factory.mktemp("direct") / "log"
    model: list[bytes] = []
    opened = dict(segment_size=segment, buffer_size=16 * 1024)
    wal = WAL(path, sync="always", **opened)
    counter = 0

    def payload(size: int) -> bytes:
        nonlocal counter
        counter += 1
        return (counter.to_bytes(4, "little") * (size // 4 + 1))[:size]

    try:
        for op, arg in steps:
            if op in ("append", "big"):
                data = payload(arg)
                assert wal.append(data) == len(model) + 1
                model.append(data)
            elif op == "many":
                batch = [payload(i * 37 % 500) for i in range(arg)]
                wal.append_many(batch)
                wal.sync()
                model += batch
            elif op == "truncate" and model:
                keep = max(0, len(model) - 1 - arg)
                if keep >= 1:
                    wal.truncate_back(keep)
                    del model[keep:]
            elif op == "reopen":
                wal.close()
                wal = WAL(path, sync=arg, **opened)
            for seq in (1, len(model)) if model else ():
                assert wal.read(seq) == model[seq - 1]
        wal.close()
        wal = WAL(path, sync="always", **opened)
        assert [p for _, _, p in wal.replay()] == model
    finally:
        wal.close()


def test_small_durable_appends_go_straight_to_the_device(tmp_path):
    """On a file system that takes O_DIRECT (this one), a lone appender's records do."""
    probe = tmp_path / "probe"
    try:
        fd = os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_DIRECT)
    except OSError:
        return  # e.g. tmpfs: the buffered path, which every other test covers
    os.close(fd)
    with WAL(tmp_path / "log", segment_size=1 << 20, sync="always") as wal:
        for i in range(200):
            wal.append(b"%d" % i * 10)
        stats = wal.stats()
        assert stats["direct_writes"] == 200  # across a block boundary too (two blocks)
        assert [wal.read(s) for s in (1, 200)] == [b"0" * 10, b"199" * 10]
    with WAL(tmp_path / "log", segment_size=1 << 20, sync="none") as wal:
        for _ in range(400):
            wal.append(b"x")  # 400 records of 24 bytes: 3 blocks
        wal.sync()
        assert wal.stats()["direct_writes"] == 0  # a batch of over two blocks stays buffered
