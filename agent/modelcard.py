"""The model card: a README.md a person reads beside every policy (what it drives, from which camera,
what data and training made it, how it did when evaluated).

It is rendered from the policy's JSON card, the one source of truth, so the two never disagree:
`save_policy` and `export` write it, and `record_results` (called by `eval`, and by any command that
measures a policy) adds a row to the card's "results" and renders the README again. Each row carries
the hash of the weights it was measured on; a policy saved again (new weights) starts a fresh card.
Pure Python (no torch), so any command can update a card.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

from sim.errors import UserError
from sim.files import atomic_write_text, read_json_object, write_json

CARD_FILE = "card.json"
README_FILE = "README.md"
ONNX_SUFFIX = ".onnx"

# eval summary figures kept on the card, in the order of the README table
EVAL_FIGURES = ("laps_attempted", "laps_completed", "route_completion", "off_track_per_km", "mean_abs_cte_m",
                "autonomy_pct", "mean_lap_time_s")


def is_onnx(model: str | os.PathLike) -> bool:
    return Path(model).suffix.lower() == ONNX_SUFFIX


def card_path(model: str | os.PathLike) -> Path:
    """The JSON card of a policy: `FOLDER/card.json`, or `NAME.card.json` beside `NAME.onnx`."""
    model = Path(model)
    return model.with_suffix(".card.json") if is_onnx(model) else model / CARD_FILE


def readme_path(model: str | os.PathLike) -> Path:
    """The model card: `FOLDER/README.md`, or `NAME.README.md` beside `NAME.onnx`."""
    model = Path(model)
    return model.with_suffix(".README.md") if is_onnx(model) else model / README_FILE


def write_model_card(model: str | os.PathLike, card: dict) -> Path:
    """Render `card` (the parsed JSON card of the policy at `model`) as its README, atomically."""
    return atomic_write_text(readme_path(model), render(Path(model), card))


def record_results(model: str | os.PathLike, section: str, key: str, figures: dict, command: str = "") -> Path:
    """Add (or replace, for the same `key`) one row of measured `figures` under `section` ("eval",
    "benchmark", ...) of the policy's card, then render its README again. Returns the README path."""
    path = card_path(model)
    if not path.is_file():
        raise UserError(f"{path}: missing, so the figures cannot be recorded on the model card")
    card = read_json_object(path, "not a valid policy card")
    row = {"key": key, **figures, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "command": command, "sha256": _model_hash(card)}
    results = card.setdefault("results", {})
    rows = [r for r in results.get(section, []) if isinstance(r, dict) and r.get("key") != key]
    results[section] = [*rows, row]
    write_json(path, card)
    return write_model_card(model, card)


def record_eval(model: str | os.PathLike, report: dict) -> Path:
    """`record_results` for an `eval` report: the summary figures, keyed by tracks, laps and seed."""
    s = report["settings"]
    key = f"{s['tracks']}, {s['laps']} lap{'s' if s['laps'] != 1 else ''}, seed {s['seed']}" + (
        ", random palettes" if s.get("randomise_palette") else "")
    env = s.get("env", {})
    if env.get("task") == "traffic":  # a denser test is another test
        key += f", traffic {env.get('traffic', {}).get('density_per_km', 4.0):g} per km"
    figures = {k: report["summary"].get(k) for k in EVAL_FIGURES}
    return record_results(model, "eval", key, figures, report.get("command", ""))


def _model_hash(card: dict) -> str | None:
    return card.get("onnx", {}).get("sha256") if "onnx" in card else card.get("weights_sha256")


# -- rendering --------------------------------------------------------------------------------------
def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _shape(dims: list) -> str:
    return "(" + ", ".join(map(str, dims)) + ")"


HEADINGS = {"key": "tracks", "laps_attempted": "laps", "laps_completed": "clean laps",
            "route_completion": "route completion", "off_track_per_km": "off-track per km",
            "mean_abs_cte_m": "mean \\|cte\\| (m)", "autonomy_pct": "autonomy %", "mean_lap_time_s": "lap time (s)"}


def _table(rows: list[dict], columns: list[str]) -> list[str]:
    lines = ["| " + " | ".join(HEADINGS.get(c, c.replace("_", " ")) for c in columns) + " |",
             "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c)).replace("|", "\\|") for c in columns) + " |" for r in rows]
    return lines


def _camera_line(env: dict) -> str:
    cam = env.get("camera", {})
    car = env.get("car", {})
    extra = ", ".join(f"{k} {v}" for k, v in cam.items() if k not in ("kind", "width", "height"))
    dt = car.get("dt")
    return (f"{cam.get('kind', '?')} {cam.get('width', '?')}x{cam.get('height', '?')} RGB"
            + (f" ({extra})" if extra else "") + (f", one frame every {dt} s" if dt else ""))


def render(model: Path, card: dict) -> str:
    """The README text of a policy card (a policy folder's or an ONNX export's)."""
    env = card.get("env", {})
    onnx = card.get("onnx")
    outputs = card.get("outputs", ["steering"])
    name = model.stem if onnx else model.name
    params = card.get("parameters")
    what = f"`{card.get('arch', '?')}` CNN" + (f" ({params:,} parameters)" if isinstance(params, int) else "")
    lines = [f"# Model card: {name}", "",
             ("An ONNX export of a " if onnx else "A ") + what + f" that drives the `{env.get('task', 'lane')}` "
             f"task of E2E Drive from one camera frame at a time: it outputs {', '.join(outputs)} in [-1, 1] "
             "(negative steering = left). Trained by behavioural cloning on recorded drives.", ""]
    lines += ["## Input and output", "", f"- camera: {_camera_line(env)}"]
    pre = card.get("preprocess", {})
    if onnx:
        inp, out = onnx["input"], onnx["output"]
        lines += [f"- file: `{model.name}` (ONNX opset {onnx['opset']}, sha256 `{onnx['sha256'][:16]}...`), "
                  f"runs in onnxruntime or any ONNX runtime, no Python needed",
                  f"- input `{inp['name']}`: {inp['dtype']} {_shape(inp['shape'])} ({inp['layout']}), {inp['meaning']}",
                  f"- output `{out['name']}`: {out['dtype']} {_shape(out['shape'])}, columns: "
                  f"{', '.join(out['columns'])}",
                  f"- preprocessing ({pre.get('name')} v{pre.get('version')}) is inside the graph: "
                  f"{onnx['preprocessing']}",
                  f"- exported from `{card.get('exported_from', '?')}`"]
    else:
        lines += [f"- weights: `{card.get('weights', '?')}` (safetensors, sha256 "
                  f"`{str(card.get('weights_sha256', ''))[:16]}...`), loads with no pickle",
                  f"- preprocessing: {pre.get('name')} v{pre.get('version')} (uint8 RGB frame, scaled to [0, 1], "
                  f"channels first; the network's first layer maps it to [-1, 1])",
                  "- load it: `python run_drive.py eval --model " + str(model) + "`"]
    data = card.get("data") or {}
    if data:
        lines += ["", "## Data", ""]
        lines += [f"- {k.replace('_', ' ')}: {', '.join(map(str, v)) if isinstance(v, list) else _fmt(v)}"
                  for k, v in data.items()]
    training = dict(card.get("training") or {})
    if training:
        config = training.pop("config", None)
        lines += ["", "## Training", ""]
        lines += [f"- {k.replace('_', ' ')}: {_fmt(v)}" for k, v in training.items()]
        if isinstance(config, dict):
            lines += ["", "Settings: " + ", ".join(f"{k}={json.dumps(v)}" for k, v in config.items())]
    env_rest = {k: v for k, v in env.items() if k in ("task", "car")}
    if env_rest:
        lines += ["", "Simulator settings (the env is made from these): `" + json.dumps(env_rest) + "`"]
    results = card.get("results") or {}
    for section, rows in results.items():
        rows = [r for r in rows if isinstance(r, dict)]
        if not rows:
            continue
        lines += ["", f"## {section.capitalize()} results", ""]
        fixed = ["key"] + [c for c in (EVAL_FIGURES if section == "eval" else ()) if any(c in r for r in rows)]
        others = sorted({c for r in rows for c in r} - set(fixed) - {"date", "command", "sha256"})
        lines += _table(rows, fixed + others + ["date"])
        commands = [r["command"] for r in rows if r.get("command")]
        if commands:
            lines += ["", "Commands:", "", "```", *commands, "```"]
    if not results:
        lines += ["", "## Results", "", "Not evaluated yet: `python run_drive.py eval --model "
                  f"{model} --tracks procedural:1000-1019` records its figures here."]
    return "\n".join(lines) + "\n"
