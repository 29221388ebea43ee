"""keyval inspect and python -m keyval.fsck on node directories: what a user runs."""

import json
import os
import subprocess
import sys

import pytest

from keyval.cli import main as keyval
from keyval.fsck import main as fsck
from keyval.raft import snapfile
from keyval.raft.records import Entry, HardState, Snapshot
from keyval.raft.storage import RaftStorage


@pytest.fixture
def node_dir(tmp_path):
    path = str(tmp_path / "node")
    with RaftStorage(path, segment_size=8192) as st:
        st.save(HardState(3, 2, 150), [Entry(i, 3, b"v" * 50) for i in range(1, 201)])
        st.save_snapshot(Snapshot(100, 3, b"state" * 10))
    return path


def test_inspect_reports_hard_state_log_snapshot_and_segments(node_dir, capsys):
    assert keyval(["inspect", node_dir, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["hard_state"] == {"term": 3, "vote": 2, "commit": 150}
    assert info["log"] == {"first_index": 101, "last_index": 200, "entries": 100}
    assert info["snapshot"] == {"index": 100, "term": 3}
    assert info["wal_segments"] and info["problems"] == []
    assert keyval(["inspect", node_dir]) == 0
    assert "commit 150" in capsys.readouterr().out


def test_inspect_takes_the_data_directory_of_keyval_serve(tmp_path, capsys):
    # keyval serve --data DIR keeps its node in DIR/raft; inspect refused DIR itself, the
    # directory a user has named (fsck took it).
    data = tmp_path / "data"
    with RaftStorage(str(data / "raft"), segment_size=8192) as st:
        st.save(HardState(2, 1, 7), [Entry(i, 2, b"x") for i in range(1, 11)])
    assert keyval(["inspect", str(data), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["path"] == str(data / "raft")
    assert info["hard_state"] == {"term": 2, "vote": 1, "commit": 7}
    assert info["log"] == {"first_index": 1, "last_index": 10, "entries": 10}


def test_inspect_refuses_what_is_not_a_node_directory(tmp_path):
    assert keyval(["inspect", str(tmp_path)]) == 2


def test_fsck_exit_codes_on_a_node(node_dir, tmp_path):
    assert fsck([node_dir]) == 0
    snap = os.path.join(node_dir, "snap", snapfile.file_name(100, 3))
    with open(snap, "r+b") as f:
        f.seek(70)
        f.write(b"?")
    assert fsck([node_dir]) == 4
    assert fsck([node_dir, "--repair"]) == 4  # a damaged snapshot is not repairable
    assert fsck([str(tmp_path / "missing")]) == 8


def test_fsck_repairs_a_node_whose_wal_has_a_torn_tail(node_dir):
    wal_dir = os.path.join(node_dir, "wal")
    last = sorted(n for n in os.listdir(wal_dir) if n.endswith(".wal"))[-1]
    with RaftStorage(node_dir, segment_size=8192) as st:
        end = st._wal.segments()[-1]["bytes"]
    with open(os.path.join(wal_dir, last), "r+b") as f:
        f.seek(end)
        f.write(b"\x07" * 30)  # half a record, as a crash mid-write leaves it
    assert fsck([node_dir]) == 4
    assert fsck([node_dir, "--repair"]) == 1
    assert fsck([node_dir]) == 0


def segment_sizes(wal_dir: str) -> set[int]:
    return {
        os.path.getsize(os.path.join(wal_dir, n))
        for n in os.listdir(wal_dir)
        if n.endswith((".wal", ".prep"))
    }


def test_fsck_repair_keeps_the_segment_size_the_log_was_written_with(node_dir):
    wal_dir = os.path.join(node_dir, "wal")
    assert segment_sizes(wal_dir) == {8192}
    with open(os.path.join(node_dir, "snap", "x.snap.tmp"), "wb") as f:  # a repairable leftover
        f.write(b"partial")
    assert fsck([node_dir]) == 4
    assert fsck([node_dir, "--repair"]) == 1
    assert segment_sizes(wal_dir) == {8192}  # not replaced by a 64 MiB prepared segment


def test_fsck_reports_a_server_kv_db_without_meta_pages_as_corrupt(tmp_path):
    from keyval.db import DB

    server = tmp_path / "server"
    with RaftStorage(str(server / "raft"), segment_size=8192) as st:
        st.append([Entry(1, 1, b"x")])
    with DB(str(server / "kv.db")) as db, db.update() as tx:
        tx.create_bucket(b"kv").put(b"k", b"v")
    assert fsck([str(server)]) == 0
    with open(server / "kv.db", "r+b") as f:
        f.write(b"\0" * 8192)  # both meta pages
    assert fsck([str(server)]) == 4  # corruption, not "not a keyval file" (8)


def test_fsck_json_and_usage_errors(node_dir):
    out = subprocess.run(
        [sys.executable, "-m", "keyval.fsck", node_dir, "--json"], capture_output=True, text=True
    )
    assert out.returncode == 0
    assert json.loads(out.stdout)["kind"] == "node"
    usage = subprocess.run([sys.executable, "-m", "keyval.fsck"], capture_output=True)
    assert usage.returncode == 16


def test_a_reader_that_leaves_early_gets_no_traceback(node_dir):
    # `keyval inspect DIR | head -1`: the reader is gone before the output is written (its end
    # of the pipe is closed before the command starts, so every write fails).
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "keyval.cli", "inspect", node_dir, "--json"],
            stdout=write_end,
            stderr=subprocess.PIPE,
        )
    finally:
        os.close(write_end)
    assert proc.returncode == 1
    assert b"Traceback" not in proc.stderr
