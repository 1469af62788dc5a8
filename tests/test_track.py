"""Tracks: the generator, the CSV loader, SPECs, every bad input, and projection (Suzuka's crossing)."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.track import REAL_DIR, Track, TrackError, generate, load_csv, load_track, load_tracks, parse_spec


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text) if isinstance(text, str) else p.write_bytes(text)
    return p


def circle_csv(n=60, r=80.0, wr=5.0, wl=5.0):
    lines = ["# x_m,y_m,w_tr_right_m,w_tr_left_m"]
    for i in range(n):
        a = 2 * math.pi * i / n
        lines.append(f"{r * math.cos(a):.3f},{r * math.sin(a):.3f},{wr},{wl}")
    return "\n".join(lines) + "\n"


def test_generator_is_deterministic_and_varied():
    a, b = generate(7), generate(7)
    assert np.array_equal(a.xy, b.xy) and np.array_equal(a.width_left, b.width_left)
    lengths, radii, widths = [], [], []
    for seed in range(12):
        t = generate(seed)
        lengths.append(t.length)
        radii.append(t.min_radius())
        widths.append(t.width_left + t.width_right)
        assert 700 < t.length < 4400, seed
        w = t.width_left + t.width_right
        assert w.min() > 6.9 and w.max() < 14.1, seed
        assert t.min_radius() > 11.0, seed
    assert max(lengths) - min(lengths) > 1000  # short and long circuits
    assert any(w.max() - w.min() > 1.0 for w in widths)  # width varies along a track


def test_generated_tracks_never_cross_themselves():
    from sim.track import _self_intersects
    for seed in range(10):
        assert not _self_intersects(generate(seed))


def test_challenge_style_is_narrow_and_tight():
    t = generate(3, "challenge")
    assert (t.width_left + t.width_right).min() < 8.0
    assert t.min_radius() < 16.0


def test_csv_loader_reads_real_format(tmp_path):
    t = load_csv(write(tmp_path, "ring.csv", circle_csv()))
    assert t.name == "ring"
    assert t.length == pytest.approx(2 * math.pi * 80, rel=0.01)
    assert np.allclose(t.width_left, 5.0) and np.allclose(t.width_right, 5.0)
    # counter-clockwise circle: curvature positive (left), radius 80
    assert np.median(t.curvature) == pytest.approx(1 / 80, rel=0.05)


def test_all_real_circuits_load_from_package_data():
    tracks = load_tracks("real:all")
    assert len(tracks) == 25
    for t in tracks:
        assert 2000 < t.length < 7500, t.name
    assert (REAL_DIR / "LICENSE").read_text().startswith(" " * 19 + "GNU LESSER GENERAL PUBLIC LICENSE")
    spa = load_track("real:SPA")  # any case, and the name a recording keeps is the canonical one
    assert (spa.name, spa.source) == ("Spa", "real:Spa") and parse_spec("real:spa,real:Spa") == ["real:Spa"] * 2
    with pytest.raises(TrackError, match="no built-in real circuit.*Austin"):
        parse_spec("procedural:1,real:atlantis")


@pytest.mark.parametrize("name,content,needle", [
    ("empty.csv", "", "empty"),
    ("comments.csv", "# x_m,y_m,w_tr_right_m,w_tr_left_m\n", "empty"),
    ("two.csv", "0,0,5,5\n10,0,5,5\n", "only 2 points"),
    ("nan.csv", circle_csv().replace("5.0,5.0", "nan,5.0", 1), "NaN"),
    ("three.csv", "0,0,5\n1,0,5\n2,0,5\n3,0,5\n4,0,5\n", "expected 4 columns"),
    ("zero.csv", circle_csv().replace("5.0,5.0", "0,5.0", 1), "must be positive"),
    ("neg.csv", circle_csv().replace("5.0,5.0", "-2,5.0", 1), "must be positive"),
    ("words.csv", "a,b,c,d\n" * 6, "not a number"),
    ("bytes.csv", bytes(range(256)) * 4, "not a text CSV"),
])
def test_bad_track_files_are_refused_with_one_line(tmp_path, name, content, needle):
    p = write(tmp_path, name, content)
    with pytest.raises(TrackError) as e:
        load_csv(p)
    msg = str(e.value)
    assert needle in msg and str(p) in msg and "\n" not in msg


def test_bad_specs(tmp_path):
    for spec, needle in [("procedural:abc", "bad track SPEC"), ("procedural:5-2", "bad seed range"),
                         ("nope.csv", "not found"), ("", "empty track SPEC"), ("procedural:1,,", "empty item"),
                         ("bogus:3", "unknown track kind")]:
        with pytest.raises(TrackError, match=needle):
            parse_spec(spec)
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrackError, match="no .csv"):
        parse_spec(str(tmp_path / "empty"))
    with pytest.raises(TrackError, match="not found"):
        load_track(str(tmp_path / "missing.csv"))


def test_spec_expands_ranges_files_and_folders(tmp_path):
    write(tmp_path, "a.csv", circle_csv())
    write(tmp_path, "b.csv", circle_csv(r=60))
    specs = parse_spec(f"procedural:0-2,challenge:4,{tmp_path}")
    assert specs[:4] == ["procedural:0", "procedural:1", "procedural:2", "challenge:4"]
    assert [s.rsplit("/", 1)[-1] for s in specs[4:]] == ["a.csv", "b.csv"]


def test_projection_offset_sign_and_heading_error():
    t = load_track("procedural:2")
    s = 200.0
    p = t.point_at(s)
    h = t.heading_at(s)
    left = p + 2.0 * np.array([-math.sin(h), math.cos(h)])
    pr = t.project(left[0], left[1], h + 0.1, s_hint=s)
    assert pr.s == pytest.approx(s, abs=1.0)
    assert pr.offset == pytest.approx(2.0, abs=0.1)
    assert pr.heading_error == pytest.approx(0.1, abs=0.05)


def test_projection_at_suzuka_crossing_follows_the_branch():
    t = load_track("real:suzuka")
    # find the crossing: two points far apart along the track but close in space
    step = 5
    xy, s = t.xy[::step], t.s[::step]
    d = np.hypot(*(xy[:, None] - xy[None]).transpose(2, 0, 1))
    ds = np.abs(s[:, None] - s[None])
    ds = np.minimum(ds, t.length - ds)
    d[ds < 200] = np.inf
    i, j = np.unravel_index(np.argmin(d), d.shape)
    assert d[i, j] < 5.0  # the bridge
    for a, b in ((i, j), (j, i)):
        x, y = xy[a]
        hinted = t.project(x, y, s_hint=s[a] - 3.0)
        assert abs(hinted.s - s[a]) < 5.0  # stays on its own branch
        other = t.project(x, y, s_hint=s[b])
        assert abs(other.s - s[b]) < 5.0


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.floats(0, 1), st.floats(-3, 3))
def test_projection_is_consistent_with_point_at(seed, frac, off):
    """Property: a point placed at (s, offset) projects back to (s, offset) on random closed curves."""
    rng = np.random.default_rng(seed)
    # a smooth random loop: a circle of 200 m bent by a few low harmonics (no corner tighter than 20 m)
    ang = np.linspace(0, 2 * np.pi, 60, endpoint=False)
    r = 200.0 + sum(rng.uniform(0, 12) * np.cos(k * ang + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4))
    from sim.track import make_track
    t = make_track("rand", np.stack([np.cos(ang) * r, np.sin(ang) * r], 1), np.full(60, 5.0), np.full(60, 5.0))
    assert t.tightest_corner() > 20.0
    s = frac * t.length
    p, h = t.point_at(s), t.heading_at(s)
    q = p + off * np.array([-math.sin(h), math.cos(h)])
    pr = t.project(q[0], q[1], h, s_hint=s)
    ds = (pr.s - s + t.length / 2) % t.length - t.length / 2
    assert abs(ds) < 1.5
    assert pr.offset == pytest.approx(off, abs=0.3)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=400) | st.text(max_size=400))
def test_loader_never_crashes_but_with_its_own_error(tmp_path_factory, content):
    p = tmp_path_factory.mktemp("fuzz") / "t.csv"
    p.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass"))
    try:
        t = load_csv(p)
    except TrackError as e:
        assert "\n" not in str(e)
    else:
        assert isinstance(t, Track) and t.length > 0


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.floats(-500, 500), st.floats(-500, 500), st.floats(0.5, 10), st.floats(0.5, 10)),
                min_size=5, max_size=40))
def test_loader_on_random_point_sets(tmp_path_factory, rows):
    p = tmp_path_factory.mktemp("fuzz") / "pts.csv"
    p.write_text("\n".join(",".join(f"{v:.4f}" for v in r) for r in rows))
    try:
        t = load_csv(p)
    except TrackError as e:
        assert "\n" not in str(e)
    else:
        assert np.isfinite(t.xy).all() and t.length > 0


def test_tracks_command_lists_and_draws_the_built_in_circuits(tmp_path):
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    png = tmp_path / "thumbs.png"
    r = subprocess.run([sys.executable, "run_drive.py", "tracks", "real:SUZUKA,challenge:3", "--plot", str(png)],
                       cwd=root, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    rows = {ln.split()[0]: ln.split() for ln in r.stdout.splitlines() if ln.startswith(("Suzuka", "challenge:3"))}
    for name, spec in (("Suzuka", "real:Suzuka"), ("challenge:3", "challenge:3")):
        t = load_track(spec)
        w = t.width_left + t.width_right
        assert rows[name][1:] == [spec, f"{t.length:.0f}", f"{w.min():.1f}-{w.max():.1f}", f"{t.tightest_corner():.1f}"]
    assert 10.0 < t.tightest_corner() < 16.0 and t.tightest_corner() >= t.min_radius()  # challenge: hairpins
    assert png.stat().st_size > 5000
