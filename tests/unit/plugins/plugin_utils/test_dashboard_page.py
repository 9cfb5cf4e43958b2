# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Units for the health dashboard: history on disk, what is wrong in words, the page."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from ansible_collections.qadhya.dbops.plugins.plugin_utils import _dashboard as dash
from ansible_collections.qadhya.dbops.plugins.plugin_utils._files import write_json

NOW = datetime(2026, 2, 11, 12, 0, tzinfo=UTC)


def record(host, hours_ago, result="ok", rows=100, checks=None, **extra):
    started = (NOW - timedelta(hours=hours_ago)).strftime("%Y-%m-%dT%H:%M:%S.000000Z")
    return dict({"host": host, "started_at": started, "result": result,
                 "checks": checks or [{"check": "database", "status": "ok", "detail": "PostgreSQL 15"}],
                 "database": {"name": "qadhya", "size_bytes": 1048576 * rows, "total_rows": rows,
                              "tables": {"users": 2, "knowledge_base": rows - 2}},
                 "newest_backup": {"name": "qadhya-x.dump", "age_h": 2.5, "bytes": 3145728,
                                   "verified": {"level": "structure", "ok": True}},
                 "pending_migrations": []}, **extra)


def test_history_is_written_read_back_by_host_and_pruned(tmp_path):
    for hours in (24 * 100, 48, 1):
        r = record("db1", hours)
        write_json(dash.history_path(str(tmp_path), r), r)
    old = record("db2", 24 * 200)
    write_json(dash.history_path(str(tmp_path), old), old)
    (tmp_path / "db1-latest.json").write_text("{}")
    (tmp_path / "db1-20260101T000000.json.tmp").write_text("x")
    history = dash.read_records(str(tmp_path), {"db1", "db2"})
    assert [r["started_at"][:10] for r in history["db1"]] == ["2025-11-03", "2026-02-09", "2026-02-11"]
    removed = dash.prune(str(tmp_path), {"db1", "db2"}, NOW, 90)
    # The 100-day-old record goes; db2's only record stays, however old.
    assert removed == ["db1-20251103T120000.json"]
    assert len(dash.read_records(str(tmp_path), {"db2"})["db2"]) == 1
    assert oct((tmp_path / "db1-20260211T110000.json").stat().st_mode & 0o777) == "0o640"


def test_red_first_and_explained():
    bad = record("db2", 1, "critical", checks=[
        {"check": "backup", "status": "critical", "detail": "no verified backup of qadhya; run backup.yml"},
        {"check": "disk", "status": "warning", "detail": "900 MiB free"}])
    views = [dash.host_view("db1", [record("db1", 1)], None, NOW), dash.host_view("db2", [bad], None, NOW),
             dash.host_view("db3", [], None, NOW)]
    page = dash.render("prod", views, NOW)
    assert '<h1 id="overall" data-status="critical">' in page
    # Critical problems come before warnings, hosts in red before green ones.
    assert page.index("no verified backup") < page.index("900 MiB free")
    red, green = 'data-host="db2" data-status="critical"', 'data-host="db1" data-status="ok"'
    assert page.index(red) < page.index(green)
    assert 'data-host="db3" data-status="critical"' in page and "no check record" in page
    assert "http" not in page.replace("http://www.w3.org/2000/svg", "")


def test_charts_are_inline_svg_with_their_values_in_words():
    history = [record("db1", h, rows=r) for h, r in ((72, 100), (48, 150), (1, 400))]
    page = dash.render("prod", [dash.host_view("db1", history, None, NOW)], NOW)
    assert page.count("<svg") >= 4
    assert "rows: 400 now (100 to 400 over 3 checks)" in page
    assert "size: 400.0 MiB now" in page


def test_a_failed_or_late_drill_is_a_problem_and_its_recovery_time_is_shown(tmp_path):
    failed = {"host": "db1", "status": "failed", "reason": "row count of users differs",
              "recovery_seconds": 42, "data_age_seconds": 3600, "tables_checked": 6,
              "backup": {"key": "prod/qadhya-20260210T020000Z.dump", "sha256": "ab"},
              "started_at": (NOW - timedelta(days=1)).isoformat()}
    write_json(str(tmp_path / "db1-20260210T120000Z.json"), failed)
    older = dict(failed, status="ok", started_at=(NOW - timedelta(days=9)).isoformat())
    write_json(str(tmp_path / "db1-20260202T120000Z.json"), older)
    drill = dash.newest_drills(str(tmp_path), {"db1"})["db1"]
    assert drill["status"] == "failed"
    view = dash.host_view("db1", [record("db1", 1)], drill, NOW)
    assert view["status"] == "critical"
    page = dash.render("prod", [view], NOW)
    assert "last DR drill failed: row count of users differs" in page and "recovered in 42 s" in page
    assert "from <code>prod/qadhya-20260210T020000Z.dump</code>" in page
    late = dash.host_view("db1", [record("db1", 1)], older, NOW)
    assert late["status"] == "warning" and "weekly expected" in late["problems"][0][2]


def test_all_green_says_so_and_text_is_escaped():
    view = dash.host_view("<db1>", [record("<db1>", 1, pending_migrations=["x<y>.sql"])], None, NOW)
    page = dash.render("prod", [view], NOW)
    assert "Nothing is wrong" in page and "<db1>" not in page and "&lt;db1&gt;" in page
    assert "x&lt;y&gt;.sql" in page


def test_offsite_copy_shown_when_recorded():
    r = record("db1", 1, offsite_copy={"url": "s3://b/qadhya/x.dump", "bytes": 3145728, "age_s": 3600,
                                       "verified_remote": True, "taken_at": "2026-02-11T11:00:00Z"})
    page = dash.render("prod", [dash.host_view("db1", [r], None, NOW)], NOW)
    assert "s3://b/qadhya/x.dump" in page and "60 min old" in page
    assert json.dumps("offsite copy: none recorded") not in page
