import json
import os
import time
from pathlib import Path

import pytest

from core.audit import AuditLog, list_segments
from core.auditread import Filter, parse_time, records, verify
from core.config import AuditConfig
from tests.conftest import Clock

KEY = b"k" * 32


def write_log(directory: Path, lines: int, clock: Clock, **config: object) -> AuditLog:
    log = AuditLog(directory, KEY, AuditConfig(**config), clock=clock)  # type: ignore[arg-type]
    for i in range(lines):
        clock.advance(1)
        log.record(
            "request",
            client=f"10.0.0.{i % 5}",
            status=202,
            decision="accepted",
            reason="queued",
            event=f"ADD_ARTIFACT_ALIAS e/p/c:v{i}",
            job_id=i,
        )
    return log


def lines_of(directory: Path) -> list[str]:
    return (directory / "audit-000001.jsonl").read_text().splitlines(keepends=True)


def rewrite(directory: Path, lines: list[str]) -> None:
    (directory / "audit-000001.jsonl").write_text("".join(lines))


@pytest.fixture
def log_dir(tmp_path: Path, clock: Clock) -> Path:
    write_log(tmp_path, 10, clock).close()
    return tmp_path


def damage(directory: Path) -> tuple[str, int]:
    report = verify(directory, KEY)
    assert not report.ok
    assert report.damage is not None
    return report.damage.kind, report.damage.line


def test_intact_log_verifies_and_holds_no_secrets(log_dir: Path) -> None:
    report = verify(log_dir, KEY)
    assert report.ok, report.damage
    assert report.lines == 10 and report.last_seq == 10
    assert KEY.decode() not in lines_of(log_dir)[0]


def test_wrong_key_fails(log_dir: Path) -> None:
    assert not verify(log_dir, b"x" * 32).ok


def test_edited_line(log_dir: Path) -> None:
    lines = lines_of(log_dir)
    lines[3] = lines[3].replace('"status":202', '"status":200')
    rewrite(log_dir, lines)
    assert damage(log_dir) == ("edited", 4)


def test_removed_line(log_dir: Path) -> None:
    lines = lines_of(log_dir)
    del lines[4]
    rewrite(log_dir, lines)
    assert damage(log_dir) == ("removed", 5)


def test_inserted_forged_line(log_dir: Path) -> None:
    lines = lines_of(log_dir)
    lines.insert(2, '{"v":1,"seq":3,"kind":"request","client":"evil","mac":"' + "0" * 64 + '"}\n')
    rewrite(log_dir, lines)
    assert damage(log_dir) == ("inserted", 3)


def test_inserted_copy_of_an_authentic_line(log_dir: Path) -> None:
    lines = lines_of(log_dir)
    lines.insert(6, lines[2])
    rewrite(log_dir, lines)
    assert damage(log_dir) == ("inserted", 7)


def test_reordered_lines(log_dir: Path) -> None:
    lines = lines_of(log_dir)
    lines[4], lines[5] = lines[5], lines[4]
    rewrite(log_dir, lines)
    assert damage(log_dir) == ("reordered", 5)


def test_truncated_at_the_end_whole_lines(log_dir: Path) -> None:
    rewrite(log_dir, lines_of(log_dir)[:-2])
    kind, _ = damage(log_dir)
    assert kind == "truncated"
    assert "head says 10" in str(verify(log_dir, KEY).damage)


def test_truncated_mid_line(log_dir: Path) -> None:
    lines = lines_of(log_dir)
    rewrite(log_dir, [*lines[:-1], lines[-1][:40]])
    assert damage(log_dir) == ("truncated", 10)


def test_head_deleted_cannot_prove_the_end(log_dir: Path) -> None:
    (log_dir / "head.json").unlink()
    assert damage(log_dir)[0] == "truncated"


def test_rotation_continues_the_chain_and_retention_is_not_damage(
    tmp_path: Path, clock: Clock
) -> None:
    log = write_log(tmp_path, 200, clock, max_file_bytes=4096, keep_files=3)
    log.close()
    segments = list_segments(tmp_path)
    assert len(segments) == 3
    assert all(path.stat().st_size < 4096 + 1024 for _, path in segments)
    report = verify(tmp_path, KEY)
    assert report.ok, report.damage
    assert any("pruned by retention" in note for note in report.notes)


def test_deleting_a_kept_segment_is_detected(tmp_path: Path, clock: Clock) -> None:
    write_log(tmp_path, 200, clock, max_file_bytes=4096, keep_files=3).close()
    list_segments(tmp_path)[0][1].unlink()
    assert damage(tmp_path)[0] == "removed"


def test_restart_continues_the_chain(tmp_path: Path, clock: Clock) -> None:
    write_log(tmp_path, 5, clock).close()
    write_log(tmp_path, 5, clock).close()
    report = verify(tmp_path, KEY)
    assert report.ok and report.last_seq == 10
    assert len(list_segments(tmp_path)) == 1


def test_restart_after_truncation_records_a_break_and_verify_still_fails(
    tmp_path: Path, clock: Clock
) -> None:
    write_log(tmp_path, 6, clock).close()
    rewrite(tmp_path, lines_of(tmp_path)[:3])
    log = write_log(tmp_path, 2, clock)
    log.close()
    assert len(list_segments(tmp_path)) == 2
    report = verify(tmp_path, KEY)
    assert report.damage is not None and report.damage.kind == "removed"
    assert any("ends at seq 3 but head says seq 6" in note for note in report.notes)


def test_segment_replaced_while_running_starts_a_new_segment(tmp_path: Path, clock: Clock) -> None:
    log = write_log(tmp_path, 3, clock)
    (tmp_path / "audit-000001.jsonl").unlink()
    clock.advance(5)
    log.record("request", status=202, decision="accepted")
    log.close()
    assert [n for n, _ in list_segments(tmp_path)] == [2]
    breaks = [r for r in records(tmp_path) if r["kind"] == "break"]
    assert breaks and "deleted or replaced" in breaks[0]["reason"]
    assert not verify(tmp_path, KEY).ok


def test_segment_appended_to_while_running_is_noticed(tmp_path: Path, clock: Clock) -> None:
    log = write_log(tmp_path, 3, clock)
    with (tmp_path / "audit-000001.jsonl").open("a") as handle:
        handle.write('{"forged": true}\n')
    log.record("request", status=202, decision="accepted")
    log.close()
    assert any(r.get("kind") == "break" for r in records(tmp_path))
    assert damage(tmp_path)[0] in ("inserted", "edited")


def test_flood_of_rejections_is_summarised_and_bounded(tmp_path: Path, clock: Clock) -> None:
    log = AuditLog(
        tmp_path,
        KEY,
        AuditConfig(rejections_per_second=5.0, rejection_burst=10, summary_interval_s=10.0),
        clock=clock,
    )
    for i in range(50_000):
        now = i / 5000.0  # 5,000 forged requests a second for 10 s
        log.record_rejection(
            {
                "client": f"198.51.{i % 200}.{i % 250}",
                "status": 401,
                "decision": "rejected",
                "reason": "bad_token",
            },
            now,
        )
    log.tick(20.0)
    log.close()
    kept = list(records(tmp_path))
    written = [r for r in kept if r["kind"] == "request"]
    summaries = [r for r in kept if r["kind"] == "summary"]
    assert len(written) <= 10 + 5 * 10 + 1
    assert sum(s["suppressed"] for s in summaries) + len(written) == 50_000
    assert summaries[0]["by_reason"] == {"401 bad_token": summaries[0]["suppressed"]}
    assert sum(p.stat().st_size for _, p in list_segments(tmp_path)) < 64 * 1024
    assert verify(tmp_path, KEY).ok


def test_filters_for_show(log_dir: Path) -> None:
    all_records = [r for r in records(log_dir) if r["kind"] == "request"]
    by_client = [r for r in all_records if Filter(client="10.0.0.1").accepts(r)]
    assert len(by_client) == 2
    assert [r["job_id"] for r in all_records if Filter(event="c:v7").accepts(r)] == [7]
    assert not [r for r in all_records if Filter(decision="rejected").accepts(r)]
    late = parse_time(all_records[5]["ts"], 0)
    assert len([r for r in all_records if Filter(since=late).accepts(r)]) == 5
    assert parse_time("2h", 10_000.0) == 10_000.0 - 7200
    with pytest.raises(ValueError):
        parse_time("yesterday", 0)


def test_lines_are_json_with_required_fields(log_dir: Path) -> None:
    record = json.loads(lines_of(log_dir)[0])
    assert {"v", "seq", "ts", "kind", "prev", "mac"} <= set(record)
    assert oct(os.stat(log_dir / "audit-000001.jsonl").st_mode & 0o777) == "0o600"


def test_tail_follows_new_lines_across_rotation(tmp_path: Path, clock: Clock) -> None:
    import threading

    from core.auditread import tail

    log = write_log(tmp_path, 3, clock, max_file_bytes=4096, keep_files=0)
    seen: list[dict[str, object]] = []
    done = threading.Event()
    follower = threading.Thread(
        target=tail,
        kwargs={
            "directory": tmp_path,
            "out": seen.append,
            "follow": True,
            "lines": 2,
            "poll_s": 0.01,
            "stop": done.is_set,
        },
    )
    follower.start()
    deadline = time.monotonic() + 5
    while len(seen) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    for i in range(60):  # enough to rotate into a second segment
        log.record("request", status=202, decision="accepted", job_id=1000 + i)
    while len(seen) < 2 + 61 and time.monotonic() < deadline:
        time.sleep(0.01)
    done.set()
    follower.join()
    log.close()
    assert len(list_segments(tmp_path)) >= 2
    jobs = [r.get("job_id") for r in seen if r.get("kind") == "request"]
    assert jobs[:2] == [1, 2]
    assert jobs[2:] == [1000 + i for i in range(60)]
    assert any(r.get("kind") == "segment" for r in seen)
