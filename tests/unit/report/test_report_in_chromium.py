"""The HTML reports render in a real browser: headless Chromium takes a screenshot of the run report and of the
history page, logs no console message, and the screenshot holds the plots' own colours (so the SVG drew).

Chromium is a test-only Debian package (``lab.host.packages.TEST_PACKAGES``) that ``python3 -m lab test``
installs; without it these tests skip and say so.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from lab.report.history import build_history, load_runs, write_history_html
from lab.report.html import write_html

from .test_history import record, write_run

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this host (apt-get install chromium; "
                                                          "python3 -m lab test installs it)")

CBUS_BLUE, DIRECT_ORANGE, FAILED_RED = (0x09, 0x69, 0xDA), (0xBC, 0x4C, 0x00), (0xCF, 0x22, 0x2E)


def decode_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and the RGB rows of an 8-bit RGB or RGBA, non-interlaced PNG (what Chromium writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and colour in (2, 6) and interlace == 0, header
    bpp = 3 if colour == 2 else 4
    raw, stride, rows, prev = zlib.decompress(idat), width * bpp, [], bytearray(width * bpp)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        if kind == 2:  # Up, the commonest: one pass without the per-byte branches below
            line = bytearray((v + u) & 0xFF for v, u in zip(line, prev, strict=True))
        for i in range(stride if kind in (1, 3, 4) else 0):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rows.append(bytes(line) if bpp == 3 else bytes(v for j, v in enumerate(line) if j % 4 != 3))
        prev = line
    return width, height, rows


def count_colour(rows: list[bytes], rgb: tuple[int, int, int]) -> int:
    needle = bytes(rgb)
    return sum(sum(1 for i in range(0, len(row), 3) if row[i:i + 3] == needle) for row in rows)


def screenshot(page: Path, png: Path, size: str = "700,1000") -> str:
    """Chromium's screenshot of ``page`` into ``png``; returns its stderr (console messages are logged there)."""
    done = subprocess.run([CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
                           "--hide-scrollbars", "--enable-logging=stderr", "--v=0", f"--window-size={size}",
                           f"--user-data-dir={png.parent / 'profile'}", f"--screenshot={png}", page.as_uri()],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and png.is_file(), done.stderr[-2000:]
    return done.stderr


def console_messages(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def test_the_console_check_can_fail(tmp_path):
    page = tmp_path / "rigged.html"
    page.write_text('<!doctype html><p>x</p><script>console.error("rigged")</script>')
    assert any('"rigged"' in line for line in console_messages(screenshot(page, tmp_path / "r.png", "300,200")))


def test_run_report_and_history_render_their_plots(tmp_path):
    nights = [write_run(tmp_path / f"night{i}", [
        record("storm-cbus", paths=["cbus"], rate=1000.0 + 50 * i, p99=2000.0 * (i + 1)),
        record("storm-direct", status="failed" if i == 1 else "passed", paths=["direct"], p99=9000.0),
    ]) for i in range(3)]
    run_page = tmp_path / "report.html"
    series = {"checker": [[i / 4, 250, 0, 1000.0 + 300 * i] for i in range(12)]}
    write_html([record("storm-cbus", paths=["cbus"], series=series),
                record("storm-direct", paths=["direct"], p99=9000.0, series=series)], run_page)
    runs = load_runs(nights)
    history_page = tmp_path / "history.html"
    write_history_html(runs, build_history(runs), history_page)

    stderr = screenshot(run_page, tmp_path / "report.png")
    assert console_messages(stderr) == []
    width, height, rows = decode_png((tmp_path / "report.png").read_bytes())
    assert (width, height) == (700, 1000)
    # the latency CDF by path: a blue curve for cbus, an orange one for direct, each a few hundred pixels
    assert count_colour(rows, CBUS_BLUE) > 200 and count_colour(rows, DIRECT_ORANGE) > 200

    stderr = screenshot(history_page, tmp_path / "history.png")
    assert console_messages(stderr) == []
    _, _, rows = decode_png((tmp_path / "history.png").read_bytes())
    assert count_colour(rows, CBUS_BLUE) > 500  # trend lines and points
    assert count_colour(rows, FAILED_RED) > 50  # storm-direct's failed night in its outcome strip, its flaky mark


def test_a_failed_scenarios_flight_recorder_timeline_renders(tmp_path):
    """The timeline of a real trace (tests/unit/report/data): lanes with the drain threads' runs, drains, inserts
    and softirqs in their own colours, and no console message."""
    from lab.report.timeline import COLOURS

    from .test_flightrec import TRACE, WARN_AT

    kept = {"path": str(TRACE), "bytes": TRACE.stat().st_size, "truncated": False, "overwritten": 0,
            "failure_time": WARN_AT}
    page = tmp_path / "report.html"
    write_html([record("warned", status="failed", data={"flightrec": {"trace": kept}})], page)
    html_text = page.read_text()
    # scroll the timeline to the top of the page: the plots above it are not what this test looks at
    page.write_text(html_text.replace("<body>", "<body><style>h1,table,section>*:not(svg.timeline){display:none}"
                                                "</style>", 1))
    stderr = screenshot(page, tmp_path / "timeline.png", "800,400")
    assert console_messages(stderr) == []
    _, _, rows = decode_png((tmp_path / "timeline.png").read_bytes())
    rgb = {name: tuple(int(COLOURS[name][i:i + 2], 16) for i in (1, 3, 5)) for name in COLOURS}
    assert count_colour(rows, rgb["cbus_task"]) > 50  # cbus/N ran on both CPUs in the window
    assert count_colour(rows, rgb["task"]) > 200  # the generator threads and python3
    assert count_colour(rows, rgb["drain"]) > 40  # legend swatch (80 px) plus drain bars
    assert count_colour(rows, rgb["insert"]) > 80 + 10  # legend swatch plus insert ticks
    assert count_colour(rows, rgb["softirq"]) > 80 + 10
