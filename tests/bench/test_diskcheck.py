"""``keyval bench DIR``: the disk-fitness check (keyval.diskcheck), on real files and fsyncs."""

from __future__ import annotations

import json

import pytest

from keyval import diskcheck


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert diskcheck.percentile(values, 50) == 50.0
    assert diskcheck.percentile(values, 99) == 99.0
    assert diskcheck.percentile(values, 100) == 100.0
    assert diskcheck.percentile([7.0], 99) == 7.0


def test_json_report_has_every_measurement_and_leaves_no_scratch_files(tmp_path, capsys):
    code = diskcheck.main([str(tmp_path), "--seconds", "0.5", "--json"])

    report = json.loads(capsys.readouterr().out)
    for key in ("fsync_overwrite", "fsync_append"):
        summary = report[key]
        assert summary["count"] >= diskcheck.MIN_SAMPLES
        assert 0 < summary["p50_ms"] <= summary["p90_ms"] <= summary["p99_ms"]
        assert summary["p99_ms"] <= summary["max_ms"]
    assert report["durable_appends"]["count"] >= diskcheck.MIN_SAMPLES
    assert report["durable_appends"]["per_second"] > 0
    assert report["sequential_write"]["bytes"] > 0
    assert report["sequential_write"]["mb_per_s"] > 0
    assert report["filesystem"]["type"]
    assert {check["name"] for check in report["checks"]} == {
        "fsync p99, 4 KiB overwrite",
        "fsync p99, 4 KiB append",
        "durable appends/s",
    }
    assert report["passed"] == all(check["passed"] for check in report["checks"])
    assert code == (0 if report["passed"] else 1)
    assert list(tmp_path.iterdir()) == []


def test_fsync_slower_than_the_threshold_fails(tmp_path, capsys, monkeypatch):
    # No real fsync takes under 0 ms, so the p99 checks must fail and the exit status is 1.
    monkeypatch.setattr(diskcheck, "FSYNC_P99_LIMIT_MS", 0.0)

    code = diskcheck.main([str(tmp_path), "--seconds", "0.2"])

    out = capsys.readouterr().out
    assert code == 1
    assert "FAIL  fsync p99, 4 KiB overwrite" in out
    assert out.rstrip().endswith("RESULT: FAIL")
    assert list(tmp_path.iterdir()) == []


def test_too_few_durable_appends_fails(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(diskcheck, "MIN_DURABLE_APPENDS_PER_S", float("inf"))

    code = diskcheck.main([str(tmp_path), "--seconds", "0.2", "--json"])

    report = json.loads(capsys.readouterr().out)
    assert code == 1
    assert not report["passed"]
    assert [c["passed"] for c in report["checks"] if c["name"] == "durable appends/s"] == [False]


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["{tmp}", "--seconds", "abc"],
        ["{tmp}", "--seconds", "0"],
        ["{tmp}", "--seconds", "-1"],
        ["{tmp}", "--no-such-option"],
        ["{tmp}/does-not-exist"],
        ["{tmp}/a-file"],
    ],
)
def test_usage_errors_exit_2(tmp_path, capsys, argv):
    (tmp_path / "a-file").write_bytes(b"")

    code = diskcheck.main([arg.replace("{tmp}", str(tmp_path)) for arg in argv])

    assert code == 2
    assert "usage:" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["a-file"]
