# Copyright: qadhya.dbops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

"""Judge what check.yml observed into its health record (docs in health_record.yml).

The playbook only gathers - module results, registered as they come, and
the one-line reasons of the steps that failed - and this filter decides,
check by check, ok / warning / critical and the sentence a person reads.
Kept in Python so that each rule can be unit-tested and read in one place,
instead of a dozen set_fact tasks of nested Jinja conditionals.
"""

import json

from ansible.errors import AnsibleFilterError

from ansible_collections.qadhya.dbops.plugins.module_utils._errors import first_line

ORDER = ("ok", "warning", "critical")
MIB = 1048576


def worst(statuses):
    """The worst of `statuses` (ok when there are none)."""
    return max(statuses, key=ORDER.index, default="ok")


def _check(name, status, detail):
    return {"check": name, "status": status, "detail": detail}


def _database(obs, info):
    if obs.get("db_error"):
        return _check("database", "critical", first_line(obs["db_error"], default="inventory failed"))
    version = (info.get("server_version") or "?").split(" ")[0]
    return _check("database", "ok", "PostgreSQL %s, databases %s" % (
        version, ", ".join(info.get("server_databases") or [])))


def _configuration(obs, info, db):
    plan = obs.get("plan") or {}
    target = obs.get("target_db") or ""
    refused = plan.get("state") == "refused"
    if not db:
        return _check("configuration", "critical", "the env file %s names no database" % obs.get("env_file"))
    if not info.get("configured_exists"):
        return _check("configuration", "critical", "the app is configured for %s, which does not exist" % db)
    if info.get("mismatch"):
        return _check("configuration", "critical", info.get("summary") or "data and configuration disagree")
    if db != target:
        return _check("configuration", "warning",
                      "the app uses %s, not %s: run consolidate.yml" % (db, target))
    rows = ((info.get("databases") or {}).get(db) or {}).get("total_rows") or 0
    detail = "app configured for %s (%s rows)" % (db, rows)
    if refused:
        detail += "; " + str(plan.get("reason") or "")
    return _check("configuration", "warning" if refused else "ok", detail)


def _migrations(obs, info, db):
    if obs.get("migrations_error"):
        return _check("migrations", "warning", first_line(obs["migrations_error"], default="status failed"))
    result = obs.get("migrations") or {}
    pending = list(result.get("pending") or [])
    missing = list(((info.get("databases") or {}).get(db) or {}).get("missing_tables") or [])
    if pending:
        detail = "%d pending: %s (run migrate.yml)" % (len(pending), ", ".join(pending))
    else:
        detail = "%d applied, none pending" % len(result.get("already_applied") or [])
    if missing:
        detail += "; missing tables: " + ", ".join(missing)
    return _check("migrations", "warning" if pending or missing else "ok", detail)


def _backup(obs, info, db):
    if obs.get("backup_error"):
        return _check("backup", "critical", first_line(obs["backup_error"], default="backup check failed"))
    listing = obs.get("backups") or {}
    newest = listing.get("newest") or {}
    settings = obs.get("settings") or {}
    max_h = float(settings.get("backup_max_age_hours", 26))
    ratio = float(settings.get("backup_min_rows_ratio", 0.5))
    live = int(((info.get("databases") or {}).get(db) or {}).get("total_rows") or 0)
    if not newest:
        listed = len(listing.get("backups") or [])
        return _check("backup", "critical", "no verified backup of %s in %s (%d listed, none complete and "
                      "verified); run backup.yml" % (db, obs.get("backup_dir"), listed))
    if int(newest.get("total_rows") or 0) < live * ratio:
        return _check("backup", "critical", "newest verified backup %s holds %s rows but %s holds %d "
                      "(below %s of it): it does not back up this data; run backup.yml"
                      % (newest.get("name"), newest.get("total_rows"), db, live, ratio))
    age = float(newest.get("age_h") or 0)
    of = (", of " + newest["database"]) if newest.get("database") not in (None, db) else ""
    verify = (obs.get("verify") or {}).get("verified") or {}
    rechecked = (", re-checked %s ok" % verify.get("level", "?")) if verify.get("ok") else ""
    detail = "%s (%s%s), %s h old (max %s), %s MiB, %s rows (live %d), verified %s%s" % (
        newest.get("name"), newest.get("purpose"), of, newest.get("age_h"), round(max_h, 1),
        round(int(newest.get("bytes") or 0) / MIB, 1), newest.get("total_rows"), live,
        (newest.get("verified") or {}).get("level", "?"), rechecked)
    return _check("backup", "warning" if age > max_h else "ok", detail)


def _offsite_copy(obs, newest):
    """The bucket's copy of the newest local backup, else its newest verified copy ({} when none)."""
    listed = (obs.get("offsite") or {}).get("copies") or []
    copies = [c for c in listed if c.get("verified") and c.get("ok", True)]
    same = [c for c in copies if c.get("name") == newest.get("name")]
    pick = (same or copies or [{}])[0]
    keep = ("name", "url", "bytes", "sha256", "verified", "age_s", "taken_at", "database")
    found = {k: pick[k] for k in keep if k in pick}
    if found:
        found["of_newest_backup"] = bool(same)
    return found


def _offsite(obs, newest):
    listing = obs.get("offsite") or {}
    bucket = obs.get("offsite_bucket")
    if listing.get("failed"):
        return _check("offsite", "critical", "cannot list s3://%s: %s" % (
            bucket, first_line(listing.get("msg") or "", default="listing failed")))
    copy_ = _offsite_copy(obs, newest)
    if not copy_:
        return _check("offsite", "critical", "no verified copy in s3://%s; run backup.yml with the offsite "
                      "settings" % bucket)
    age = human_hours(copy_.get("age_s"))
    if not copy_["of_newest_backup"] and newest:
        return _check("offsite", "warning", "the newest backup %s is not in the bucket; its newest "
                      "verified copy is %s, %s h old; run backup.yml"
                      % (newest.get("name"), copy_.get("url") or copy_.get("name"), age))
    return _check("offsite", "ok", "%s, %s h old, %s MiB, verified" % (
        copy_.get("url") or copy_.get("name"), age, round(int(copy_.get("bytes") or 0) / MIB, 1)))


def human_hours(seconds):
    return "?" if seconds is None else round(float(seconds) / 3600, 1)


def _app(obs):
    name = obs.get("app_container")
    inspect = obs.get("app_inspect") or {}
    if inspect.get("rc") != 0:
        return _check("app", "critical", "container %s not found" % name)
    try:
        state = json.loads(inspect.get("stdout") or "{}")
    except ValueError:
        state = {}
    health = (state.get("Health") or {}).get("Status") or "none"
    status = "critical" if not state.get("Running") or health == "unhealthy" else (
        "warning" if health == "starting" else "ok")
    detail = "%s %s" % (name, state.get("Status", "?"))
    detail += (", health " + health) if health != "none" else ", no healthcheck"
    log = (state.get("Health") or {}).get("Log") or []
    if health == "unhealthy" and log:
        lines = str(log[-1].get("Output") or "").strip().splitlines()
        last = lines[-1] if lines else ""
        detail += ", last check: " + (last if len(last) <= 120 else last[:117] + "...")
    return _check("app", status, detail)


def _health_url(obs):
    http = obs.get("http") or {}
    url = obs.get("health_url")
    code = int(http.get("status") or -1)
    body = http.get("json")
    answer = code if code > 0 else "nothing (%s)" % first_line(http.get("msg") or "?")
    detail = "%s answered %s" % (url, answer)
    if code != 200 and isinstance(body, dict):
        detail += ": %s" % (body.get("error") or body.get("message") or "")
    if isinstance(body, dict) and "database" in body:
        detail += ", database %s" % body["database"]
    return _check("health_url", "ok" if code == 200 else "critical", detail)


def _disk(obs, info, db):
    df = obs.get("df") or {}
    settings = obs.get("settings") or {}
    min_free = int(settings.get("min_free_mb", 1024))
    if df.get("rc") != 0:
        return _check("disk", "critical", "cannot measure: " + str(df.get("stderr") or "").strip()), -1
    # Halves round up, as Jinja's round() did in the playbook before.
    free_mb = int(int((df.get("stdout_lines") or ["0 0 0 0"])[-1].split()[3]) / 1024 + 0.5)
    size = (((info.get("databases") or {}).get(db) or {}).get("size_bytes") or 0)
    need = int(int(size) / MIB + 0.5) + int(settings.get("free_space_margin_mb", 256))
    status = "critical" if free_mb < need else ("warning" if free_mb < min_free else "ok")
    detail = "%d MiB free in %s%s (next backup needs %d MiB, warning below %d)" % (
        free_mb, obs.get("backup_dir"),
        "" if obs.get("backup_dir_exists") else " (missing; measured on its parent)", need, min_free)
    return _check("disk", status, detail), free_mb


def health_checks(obs):
    """The checks of one host, in the order they ran, and its free MiB (-1 when unknown)."""
    info = {} if obs.get("db_error") else dict(obs.get("info") or {})
    db = "" if obs.get("db_error") else (info.get("configured_database") or "")
    checks = [_database(obs, info)]
    if info:
        checks.append(_configuration(obs, info, db))
    if obs.get("migrations_dir") and db in (info.get("server_databases") or []):
        checks.append(_migrations(obs, info, db))
    if db:
        checks.append(_backup(obs, info, db))
    if db and obs.get("offsite_bucket"):
        checks.append(_offsite(obs, (obs.get("backups") or {}).get("newest") or {}))
    checks.append(_app(obs))
    if obs.get("health_url"):
        checks.append(_health_url(obs))
    disk, free_mb = _disk(obs, info, db)
    checks.append(disk)
    return checks, free_mb


def _metrics(info, db):
    """What the dashboard draws over time: the app database's size and rows."""
    entry = (info.get("databases") or {}).get(db) or {}
    tables = {name: (t or {}).get("rows") for name, t in sorted((entry.get("tables") or {}).items())}
    return {"name": db, "size_bytes": entry.get("size_bytes"), "total_rows": entry.get("total_rows"),
            "tables": tables}


def health_record(job, observed):
    """`job` (the open check record) completed from `observed`: checks, result and what the
    dashboard reads. See health_record.yml for the keys of `observed`."""
    if not isinstance(job, dict) or not isinstance(observed, dict):
        raise AnsibleFilterError("health_record: expects the check record and a dict of observations")
    checks, free_mb = health_checks(observed)
    info = {} if observed.get("db_error") else dict(observed.get("info") or {})
    db = "" if observed.get("db_error") else (info.get("configured_database") or "")
    newest = (observed.get("backups") or {}).get("newest") or {}
    newest = {k: v for k, v in newest.items() if k != "row_counts"}
    return dict(
        job,
        result=worst(c["status"] for c in checks),
        checks=checks,
        configured_database=db,
        data_databases=list(info.get("data_databases") or []),
        mismatch=bool(info.get("mismatch")),
        pending_migrations=list((observed.get("migrations") or {}).get("pending") or []),
        newest_backup=newest,
        free_mb=free_mb,
        database=_metrics(info, db),
        offsite_copy=_offsite_copy(observed, newest) if observed.get("offsite_bucket") else {},
    )


def failed_checks(job):
    """One line naming the red checks and why, for an alert or a failure message."""
    red = [c for c in (job or {}).get("checks") or [] if c.get("status") == "critical"]
    return "; ".join("%s: %s" % (c["check"], c["detail"]) for c in red) or "no critical check"


class FilterModule:
    def filters(self):
        return {"health_record": health_record, "failed_checks": failed_checks}
