"""What the benchmark reports share: reading run.json timestamps and summarising samples.

Imported by bench_report.py and bench_serverless.py (Python puts a script's own folder
first on the import path)."""

import re
import statistics
from datetime import datetime, timedelta, timezone

RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))$"
)


def parse_ts(text):
    """RFC 3339 timestamp -> aware datetime (microsecond precision); None when missing or
    malformed."""
    if not text:
        return None
    m = RFC3339.match(text.strip())
    if not m:
        return None
    year, month, day, hour, minute, second = (int(m.group(i)) for i in range(1, 7))
    micro = int(((m.group(7) or "") + "000000")[:6])
    if m.group(8):
        tz = timezone.utc
    else:
        sign = -1 if m.group(9) == "-" else 1
        tz = timezone(sign * timedelta(hours=int(m.group(10)), minutes=int(m.group(11))))
    return datetime(year, month, day, hour, minute, second, micro, tzinfo=tz)


def stats(values):
    """n, mean, median, min, max and the values themselves, ignoring None; None if empty."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {
        "n": len(values),
        "mean": statistics.fmean(values),
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "values": values,
    }
