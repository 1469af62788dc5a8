"""`run_drive.py demo`: the README's first command, end to end through the real CLI.

`test_demo_quick_end_to_end_SLOW` is the slow one of the suite (~1.5-2 minutes on 2 CPU cores): it
records, trains, evaluates and writes a report exactly as a new user's first run does.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run_drive.py"), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, check=False)


def markdown_table(md: str, first_header: str) -> list[dict[str, str]]:
    """The rows of the first Markdown table whose first column is `first_header`."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    headers = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(headers, (c.strip() for c in line.strip("|").split("|")))))
    return rows


def pct(cell: str) -> float:
    return float(cell.rstrip("%")) / 100


def test_demo_quick_end_to_end_SLOW(tmp_path):
    out = tmp_path / "report"
    r = run_cli("demo", "--quick", "--out", str(out), "--device", "cpu", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    md_path = out / "report.md"
    assert f"report: {md_path}" in r.stdout
    md = md_path.read_text()

    # every link in the report points at a file that is there
    links = re.findall(r"\]\(([^)]+)\)", md)
    assert links
    for link in links:
        assert (out / link).exists(), link
    assert (out / "loss_curves.png").stat().st_size > 1000
    assert (out / "model" / "model.safetensors").is_file()

    # the results table agrees with the JSON written beside it, and so does the policy's model card
    card = (out / "model" / "README.md").read_text()
    groups = {"unseen procedural": "eval_procedural.json", "real circuits": "eval_real.json"}
    rows = markdown_table(md, "tracks")
    assert [row["tracks"] for row in rows] == list(groups)  # the real circuits ship with the package
    assert rows[0]["tracks"] == "unseen procedural"
    for row in rows:
        report = json.loads((out / groups[row["tracks"]]).read_text())
        s = report["summary"]
        assert report["driver"]["kind"] == "model"
        assert int(row["n"]) == len(report["tracks"])
        assert row["clean laps"] == f"{s['laps_completed']}/{s['laps_attempted']}"
        assert pct(row["completion"]) == pytest.approx(s["completion_rate"], abs=6e-4)
        assert pct(row["route"]) == pytest.approx(s["route_completion"], abs=6e-4)
        assert float(row["off-track/km"]) == pytest.approx(s["off_track_per_km"], abs=6e-3)
        assert float(row["mean abs cte m"]) == pytest.approx(s["mean_abs_cte_m"], abs=6e-3)
        assert pct(row["autonomy"]) == pytest.approx(s["autonomy_pct"] / 100, abs=6e-4)
        assert float(row["lap s"]) == pytest.approx(s["mean_lap_time_s"], abs=0.06)
        assert row["expert clean"] == f"{s['expert']['laps_completed']}/{s['expert']['laps_attempted']}"
        assert s["expert"]["completion_rate"] == 1.0
        assert f"| {report['settings']['tracks']}, 1 lap, seed 0 |" in card  # the model card has the figures

    # one video, readable, as long as the JSON says
    video = json.loads((out / "eval_procedural.json").read_text())["video"]
    cap = cv2.VideoCapture(video["path"])
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == video["frames"] > 0


def test_demo_refuses_a_bad_device_before_any_work(tmp_path):
    r = run_cli("demo", "--quick", "--out", str(tmp_path / "r"), "--device", "tpu", timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "--device tpu" in r.stderr
    assert not (tmp_path / "r").exists()


def test_demo_refuses_a_folder_that_is_not_empty(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    r = run_cli("demo", "--quick", "--out", str(tmp_path), timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "not empty" in r.stderr
    assert (tmp_path / "keep.txt").read_text() == "mine"
