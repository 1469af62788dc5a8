"""`run_drive.py benchmark`: the real CLI and the real env; the JSON has exactly the format that
docs/benchmark.md documents, and a run repeats its numbers."""

import json
import re
import subprocess
import sys
from pathlib import Path

from agent.benchmark import LADDERS, PROTOCOL, Level, run_benchmark, write_report
from agent.drive import PolicyDriver

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmark.md"
TYPES = {"string": str, "bool": bool, "int": int, "number": (int, float), "list": list, "object": dict}


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run_drive.py"), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, check=False)


def documented_keys(heading: str) -> dict[str, str]:
    """key -> type from the table under `heading` in docs/benchmark.md."""
    text = DOC.read_text().split(heading, 1)[1]
    rows = re.findall(r"^\| `(\w+)` \| (\w+) \|", text.split("\n\n", 2)[1], flags=re.M)
    assert rows, heading
    return dict(rows)


def check_documented(obj: dict, keys: dict[str, str], optional: set[str] = frozenset()) -> None:
    assert set(keys) - optional <= obj.keys(), set(keys) - obj.keys()
    for key, value in obj.items():
        assert key in keys, f"{key} is not documented in {DOC.name}"
        if value is not None:
            assert isinstance(value, TYPES[keys[key]]), (key, value)


def test_benchmark_json_has_the_documented_format(tmp_path):
    top = documented_keys("Top-level keys:")
    per_level = documented_keys("Keys of each level:")
    assert f"`{PROTOCOL}`" in DOC.read_text()
    levels = ["real", "look-noise", "latency-100ms"]
    out = tmp_path / "ladder.json"
    r = run_cli("benchmark", "--expert", "--quick", "--levels", ",".join(levels), "--json", str(out))
    assert r.returncode == 0, r.stderr
    report = json.loads(out.read_text())
    check_documented(report, top, optional={"latency_sweep"})
    task_keys = {"mean_lap_time_ratio", "collisions", "collisions_per_km"}  # race and traffic only
    assert report["protocol"] == PROTOCOL and report["task"] == "lane" and report["quick"] is True
    assert report["complete"] is False  # some levels only
    assert [lv["name"] for lv in report["levels"]] == levels
    for lv in report["levels"]:
        check_documented(lv, per_level, optional=task_keys)
        assert not task_keys & lv.keys()  # lane levels carry no race or traffic figures
        assert lv["laps_completed"] == lv["laps_attempted"] >= 1 and lv["score"] == 1.0  # the expert
    assert report["levels"][0]["tracks"] == "real:Norisring"
    assert report["levels"][1]["look"] == "noise" and report["levels"][2]["latency_ms"] == 100.0
    assert report["score"] == 100.0
    assert "score 100.0" in r.stdout and "latency-100ms" in r.stdout


def test_the_lane_ladder_has_the_real_circuits_latency_and_looks():
    names = [lv.name for lv in LADDERS["lane"]]
    assert {"procedural", "challenge", "real", "latency-100ms", "latency-200ms", "look-held-out-palette",
            "look-noise", "look-blur", "look-shadows", "look-dusk"} == set(names)
    real = next(lv for lv in LADDERS["lane"] if lv.name == "real")
    assert real.tracks == "real:all"
    for name in names:  # every level is documented
        assert f"| `{name}` |" in DOC.read_text(), name


def test_unknown_level_is_one_clear_line():
    r = run_cli("benchmark", "--expert", "--quick", "--levels", "procedural,moon")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "moon" in r.stderr and "procedural" in r.stderr


def test_a_policy_scores_the_same_twice_and_gets_a_report(untrained_policy, tmp_path):
    ladder = [Level("short", "a short track, late and noisy", "procedural:0", "procedural:0", seed=3,
                    latency_ms=100, look="noise")]
    runs = [run_benchmark(PolicyDriver(policy=untrained_policy), quick=True, ladder=ladder, show_progress=False)
            for _ in range(2)]
    assert runs[0]["levels"] == runs[1]["levels"] and runs[0]["score"] == runs[1]["score"]
    level = runs[0]["levels"][0]
    assert level["laps_attempted"] == 1 and level["latency_ms"] == 100.0 and level["look"] == "noise"
    assert level["mean_abs_cte_m"] > 0 and runs[0]["complete"] is False
    page = write_report(tmp_path / "report", runs[0]).read_text()
    assert "| short | procedural:0 |" in page and PROTOCOL in page
    assert (tmp_path / "report" / "levels.png").stat().st_size > 1000
    assert json.loads((tmp_path / "report" / "benchmark.json").read_text())["levels"] == runs[0]["levels"]
