# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The health dashboard: check history in, one static HTML page out (private, controller side).

Used by the qadhya.dbops.health_dashboard action. The page must tell a
person in five seconds what is red and why: an overall status, then every
problem as a sentence (critical first), then one card per host with its
checks, its database size and row counts over time (inline SVG, nothing is
loaded from the network, so it opens from a file or a mail attachment),
its newest backup and off-host copy, its last disaster-recovery drill and
its pending migrations.
"""

from __future__ import annotations

import html
import json
import os
import re
from datetime import UTC, datetime, timedelta

ORDER = ("ok", "unknown", "warning", "critical")
RECORD_RE = re.compile(r"^(?P<host>.+)-(?P<stamp>\d{8}T\d{6}Z?)\.json$")
# A weekly drill older than this is late.
DRILL_LATE_DAYS = 8
MIB = 1048576
# Tables charted per host: the largest ones; the rest are listed.
CHART_TABLES = 6


def parse_time(text):
    """A UTC datetime from an ISO 8601 text (with or without Z), None when it is not one."""
    if not text:
        return None
    try:
        value = datetime.fromisoformat(str(text).strip().rstrip("Z"))
    except ValueError:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def stamp(text):
    """The file name stamp of a record's start time: 20260211T101500."""
    when = parse_time(text)
    return when.strftime("%Y%m%dT%H%M%S") if when else None


def worst(statuses):
    return max(statuses, key=ORDER.index, default="ok")


def human_age(seconds):
    if seconds is None:
        return "?"
    seconds = max(0, int(seconds))
    if seconds < 120:
        return "%d s" % seconds
    if seconds < 7200:
        return "%d min" % (seconds // 60)
    if seconds < 172800:
        return "%.1f h" % (seconds / 3600)
    return "%.1f days" % (seconds / 86400)


def mib(size):
    return "?" if size is None else "%.1f MiB" % (int(size) / MIB)


# ---- history on disk ---------------------------------------------------------

def history_path(history_dir, record):
    return os.path.join(history_dir, "%s-%s.json" % (record["host"], stamp(record.get("started_at"))))


def read_records(directory, hosts=None):
    """{host: [records, oldest first]} of the <host>-<stamp>.json files in `directory`
    (a `-latest.json` copy or a file that is not JSON is skipped)."""
    found = {}
    if not os.path.isdir(directory):
        return found
    for name in sorted(os.listdir(directory)):
        match = RECORD_RE.match(name)
        if not match or (hosts is not None and match.group("host") not in hosts):
            continue
        try:
            with open(os.path.join(directory, name), encoding="utf-8") as handle:
                record = json.load(handle)
        except (OSError, ValueError):
            continue
        if isinstance(record, dict):
            record.setdefault("host", match.group("host"))
            found.setdefault(match.group("host"), []).append((match.group("stamp"), record))
    return {host: [r for _s, r in sorted(items, key=lambda item: item[0])] for host, items in found.items()}


def prune(directory, hosts, now, days):
    """Delete the history records of `hosts` older than `days` (never a host's newest); the names removed."""
    removed = []
    if not os.path.isdir(directory) or days <= 0:
        return removed
    limit = (now - timedelta(days=days)).strftime("%Y%m%dT%H%M%S")
    newest = {}
    names = []
    for name in os.listdir(directory):
        match = RECORD_RE.match(name)
        if match and match.group("host") in hosts:
            names.append((match.group("host"), match.group("stamp"), name))
            newest[match.group("host")] = max(newest.get(match.group("host"), ""), match.group("stamp"))
    for host, when, name in names:
        if when < limit and when != newest[host]:
            os.unlink(os.path.join(directory, name))
            removed.append(name)
    return sorted(removed)


# ---- what is wrong, in words ---------------------------------------------------

def drill_problem(drill, now):
    """(status, sentence) of a host's last drill record; None when all is well."""
    if not drill:
        return None
    started = parse_time(drill.get("started_at"))
    if str(drill.get("status", "")).lower() not in ("ok", "passed", "success"):
        return "critical", "last DR drill failed: %s" % (drill.get("reason") or "no reason recorded")
    if started and now - started > timedelta(days=DRILL_LATE_DAYS):
        return "warning", "last DR drill is %s old (weekly expected): run dr_drill.yml" % human_age(
            (now - started).total_seconds())
    return None


def host_view(host, history, drill, now):
    """Everything the page shows of one host, judged."""
    record = history[-1] if history else None
    problems = []
    if record is None:
        status = "unknown"
        problems.append(("critical", "check", "no check record: the host failed before it was checked "
                         "(unreachable, or invalid inputs); see the run's output"))
    else:
        status = record.get("result") or "unknown"
        for check in record.get("checks") or []:
            if check.get("status") in ("warning", "critical"):
                problems.append((check["status"], check.get("check", "?"), check.get("detail", "")))
    drill_issue = drill_problem(drill, now)
    if drill_issue:
        problems.append((drill_issue[0], "drill", drill_issue[1]))
        status = worst([status, drill_issue[0]])
    if record is None:
        status = "critical"
    problems.sort(key=lambda p: -ORDER.index(p[0]))
    return {"host": host, "status": status, "record": record, "history": history, "drill": drill,
            "problems": problems}


# ---- drawing ---------------------------------------------------------------------

def sparkline(points, label, unit_format=str, width=220, height=44):
    """An inline SVG line of (datetime, value) points, with its last value and range in words."""
    points = [(t, float(v)) for t, v in points if t is not None and v is not None]
    esc = html.escape
    if not points:
        return '<p class="nodata">%s: no data yet</p>' % esc(label)
    values = [v for _t, v in points]
    low, high = min(values), max(values)
    t0, t1 = points[0][0].timestamp(), points[-1][0].timestamp()
    span_t = (t1 - t0) or 1.0
    span_v = (high - low) or 1.0
    pad = 3

    def xy(point):
        when, value = point
        x = pad + (when.timestamp() - t0) / span_t * (width - 2 * pad) if len(points) > 1 else width / 2
        y = height - pad - (value - low) / span_v * (height - 2 * pad) if high != low else height / 2
        return "%.1f,%.1f" % (x, y)

    coords = " ".join(xy(p) for p in points)
    last_x, last_y = xy(points[-1]).split(",")
    words = "%s: %s now (%s to %s over %d checks)" % (
        label, unit_format(values[-1]), unit_format(low), unit_format(high), len(points))
    return (
        '<figure class="chart" data-chart="%s"><svg xmlns="http://www.w3.org/2000/svg" role="img" '
        'width="%d" height="%d" viewBox="0 0 %d %d"><title>%s</title>'
        '<polyline fill="none" stroke="#2563eb" stroke-width="1.8" points="%s"/>'
        '<circle cx="%s" cy="%s" r="2.6" fill="#1e3a8a"/></svg>'
        '<figcaption>%s</figcaption></figure>'
        % (esc(label), width, height, width, height, esc(words), coords, last_x, last_y, esc(words)))


def _fmt_rows(value):
    return "{:,}".format(int(value)).replace(",", " ")


def _fmt_mib(value):
    return "%.1f MiB" % (value / MIB)


def _badge(status):
    return '<span class="status %s">%s</span>' % (html.escape(status), html.escape(status.upper()))


def _database_section(view):
    history = view["history"]
    record = view["record"] or {}
    db = record.get("database") or {}
    esc = html.escape
    series = [(parse_time(r.get("started_at")), r.get("database") or {}) for r in history]
    out = ['<div class="part"><h3>Database %s</h3>' % esc(db.get("name") or "?")]
    out.append("<p>%s, %s rows</p>" % (mib(db.get("size_bytes")), _fmt_rows(db.get("total_rows") or 0)))
    out.append(sparkline([(t, d.get("size_bytes")) for t, d in series], "size", _fmt_mib))
    out.append(sparkline([(t, d.get("total_rows")) for t, d in series], "rows", _fmt_rows))
    tables = sorted((db.get("tables") or {}).items(), key=lambda kv: -(kv[1] or 0))
    for name, _rows in tables[:CHART_TABLES]:
        out.append(sparkline([(t, (d.get("tables") or {}).get(name)) for t, d in series],
                             "rows in %s" % name, _fmt_rows, width=160, height=32))
    if len(tables) > CHART_TABLES:
        rest = ", ".join("%s %s" % (n, _fmt_rows(r or 0)) for n, r in tables[CHART_TABLES:])
        out.append("<p>also: %s</p>" % esc(rest))
    out.append("</div>")
    return "".join(out)


def _copy_line(kind, copy, now):
    esc = html.escape
    if not copy:
        return '<p data-part="%s">%s: none recorded</p>' % (kind, kind.replace("_", " "))
    if copy.get("age_h") is not None:
        age_text = human_age(float(copy["age_h"]) * 3600)
    elif copy.get("age_s") is not None:
        age_text = human_age(copy["age_s"])
    else:
        taken = parse_time(copy.get("taken_at") or copy.get("verified_at"))
        age_text = human_age((now - taken).total_seconds()) if taken else "?"
    verified = copy.get("verified")
    if isinstance(verified, dict):
        verified = ("verified " + str(verified.get("level", "?"))) if verified.get("ok") else "NOT verified"
    elif verified is not None:
        verified = "verified" if verified else "NOT verified"
    elif "verified_remote" in copy:
        verified = "verified" if copy["verified_remote"] else "NOT verified"
    else:
        verified = ""
    where = copy.get("url") or copy.get("name") or copy.get("path") or "?"
    return '<p data-part="%s">%s: <code>%s</code>, %s old, %s%s</p>' % (
        kind, kind.replace("_", " "), esc(str(where)), esc(age_text), esc(mib(copy.get("bytes"))),
        (", " + esc(verified)) if verified else "")


def _backup_section(view, now):
    record = view["record"] or {}
    return '<div class="part"><h3>Backups</h3>%s%s</div>' % (
        _copy_line("newest_backup", record.get("newest_backup"), now),
        _copy_line("offsite_copy", record.get("offsite_copy"), now))


def _drill_section(view, now):
    drill = view["drill"]
    esc = html.escape
    if not drill:
        return ('<div class="part" data-part="drill"><h3>DR drill</h3>'
                "<p>none recorded (run dr_drill.yml)</p></div>")
    started = parse_time(drill.get("started_at"))
    status = "ok" if str(drill.get("status", "")).lower() in ("ok", "passed", "success") else "critical"
    backup = drill.get("backup")
    source = (backup.get("key") or backup.get("path")) if isinstance(backup, dict) else backup
    return ('<div class="part" data-part="drill" data-status="%s"><h3>DR drill</h3><p>%s %s, %s ago: '
            'recovered in %s, data %s old, %s tables checked%s%s</p></div>'
            % (status, _badge(status), esc(drill.get("started_at") or "?"),
               esc(human_age((now - started).total_seconds()) if started else "?"),
               esc(human_age(drill.get("recovery_seconds"))), esc(human_age(drill.get("data_age_seconds"))),
               esc(str(drill.get("tables_checked", "?"))),
               ("; " + esc(str(drill.get("reason")))) if drill.get("reason") and status != "ok" else "",
               (", from <code>%s</code>" % esc(str(source))) if source else ""))


def _migrations_section(view):
    pending = (view["record"] or {}).get("pending_migrations") or []
    esc = html.escape
    if not pending:
        return '<div class="part" data-part="migrations"><h3>Migrations</h3><p>none pending</p></div>'
    items = "".join("<li><code>%s</code></li>" % esc(p) for p in pending)
    return ('<div class="part" data-part="migrations"><h3>Migrations</h3>'
            "<p>%d pending (run migrate.yml):</p><ul>%s</ul></div>" % (len(pending), items))


def _host_card(view, now):
    esc = html.escape
    record = view["record"] or {}
    checked = parse_time(record.get("started_at"))
    when = ("checked %s ago (%s)" % (human_age((now - checked).total_seconds()), record.get("started_at"))
            if checked else "never checked")
    rows = "".join(
        '<tr data-check="%s" data-status="%s"><td>%s</td><th>%s</th><td>%s</td></tr>'
        % (esc(c.get("check", "?")), esc(c.get("status", "?")), _badge(c.get("status", "unknown")),
           esc(c.get("check", "?")), esc(c.get("detail", "")))
        for c in sorted(record.get("checks") or [], key=lambda c: -ORDER.index(c.get("status", "ok"))))
    return (
        '<section class="host %s" data-host="%s" data-status="%s"><h2>%s '
        '<span class="host-name">%s</span></h2><p class="when">%s</p><table class="checks">%s</table>'
        '<div class="parts">%s%s%s%s</div></section>'
        % (esc(view["status"]), esc(view["host"]), esc(view["status"]), _badge(view["status"]),
           esc(view["host"]), esc(when), rows, _database_section(view), _backup_section(view, now),
           _drill_section(view, now), _migrations_section(view)))


STYLE = """
body{font:15px/1.4 system-ui,sans-serif;margin:0;background:#f8fafc;color:#0f172a}
header{padding:16px 24px;color:#fff}
header.ok{background:#15803d}header.warning{background:#b45309}
header.critical,header.unknown{background:#b91c1c}
header h1{margin:0;font-size:26px}main{padding:8px 24px 32px}
.status{display:inline-block;padding:1px 8px;border-radius:4px;font-weight:700;font-size:12px;color:#fff}
.status.ok{background:#15803d}.status.warning{background:#d97706}
.status.critical,.status.unknown{background:#dc2626}
#problems li{margin:4px 0}#problems li.critical{font-weight:600}
section.host{background:#fff;border:1px solid #cbd5e1;border-left:8px solid #15803d;border-radius:6px;
margin:16px 0;padding:8px 16px}
section.host.warning{border-left-color:#d97706}section.host.critical,section.host.unknown{border-left-color:#dc2626}
table.checks{border-collapse:collapse}table.checks td,table.checks th{padding:2px 8px;text-align:left;
vertical-align:top}
.parts{display:flex;flex-wrap:wrap;gap:8px 32px}.part{min-width:240px}
.part h3{margin:8px 0 4px;font-size:15px}
figure.chart{margin:4px 0}figcaption{font-size:12px;color:#475569}.nodata,.when{color:#64748b}
"""


def render(environment, views, now):
    """The whole page (a str). `views` come from host_view, in any order."""
    esc = html.escape
    views = sorted(views, key=lambda v: (-ORDER.index(v["status"]), v["host"]))
    overall = worst(v["status"] for v in views) if views else "unknown"
    counts = {s: sum(1 for v in views if v["status"] == s) for s in ORDER}
    summary = ", ".join("%d %s" % (counts[s], s) for s in reversed(ORDER) if counts[s]) or "no host"
    problems = sorted(((p[0], v["host"], p[1], p[2]) for v in views for p in v["problems"]),
                      key=lambda p: (-ORDER.index(p[0]), p[1]))
    if problems:
        items = "".join(
            '<li class="%s" data-host="%s" data-check="%s" data-status="%s">%s <b>%s</b> %s: %s</li>'
            % (esc(s), esc(h), esc(c), esc(s), _badge(s), esc(h), esc(c), esc(d)) for s, h, c, d in problems)
        problem_html = '<h2>What is wrong</h2><ol id="problems">%s</ol>' % items
    else:
        problem_html = ('<p id="problems" data-count="0">'
                        "Nothing is wrong: every check of every host is ok.</p>")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
        "<title>%s %s - database health</title><style>%s</style></head><body>"
        '<header class="%s"><h1 id="overall" data-status="%s">%s: %s</h1>'
        "<p>%s; generated %s UTC by check.yml (qadhya.dbops)</p></header><main>%s%s</main></body></html>\n"
        % (esc(overall.upper()), esc(environment), STYLE, esc(overall), esc(overall), esc(environment),
           esc(overall.upper()), esc(summary), esc(now.strftime("%Y-%m-%d %H:%M")), problem_html,
           "".join(_host_card(v, now) for v in views)))


def newest_drills(directory, hosts):
    """{host: the drill record with the latest started_at}."""
    result = {}
    for host, records in read_records(directory, hosts).items():
        dated = [r for r in records if parse_time(r.get("started_at"))]
        if dated:
            result[host] = max(dated, key=lambda r: parse_time(r.get("started_at")))
    return result
