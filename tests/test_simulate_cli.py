"""``qkdd simulate``: the JSON report, its agreement with the model, eavesdroppers, errors."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from qkdd.cli import main

ROOT = Path(__file__).resolve().parent.parent


def _config(tmp_path: Path, **simulation: Any) -> Path:
    import tomllib

    data = tomllib.loads((ROOT / "config" / "bob.toml").read_text())
    data["node"]["state_dir"] = str(tmp_path / "state")
    data["protocol"]["frame_duration_s"] = 0.005
    sim = data.setdefault("simulation", {})
    sim.update(simulation)
    path = tmp_path / "bob.toml"
    path.write_bytes(tomli_w.dumps(data).encode())
    return path


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code = main(["simulate", *args, "--json"])
    out = capsys.readouterr().out
    return code, (json.loads(out) if code == 0 else {})


def _z(measured: float, theory: float, n: int) -> float:
    return (measured - theory) / math.sqrt(theory * (1 - theory) / n)


def test_json_report_has_the_keys_and_agrees_with_the_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, report = _run(capsys, "-c", str(_config(tmp_path, seed=3)), "--frames", "4")
    assert code == 0
    assert report["simulated"] is True and report["slots_per_s"] > 0
    assert report["slots"] == 4 * 5_000_000
    names = [c["name"] for c in report["intensities"]]
    assert names == ["signal", "decoy", "vacuum"]
    for c in report["intensities"]:
        assert set(c) >= {"name", "mu", "gain", "gain_theory", "qber", "qber_theory", "bases"}
        assert set(c["bases"]) == {"K", "T"}
    signal = report["intensities"][0]
    assert abs(_z(signal["gain"], signal["gain_theory"], signal["sent"])) < 5
    n_sifted = signal["bases"]["K"]["detections"]
    assert abs(_z(signal["bases"]["K"]["qber"], signal["bases"]["K"]["qber_theory"], n_sifted)) < 5
    # the seed makes the run repeatable
    again = _run(capsys, "-c", str(_config(tmp_path, seed=3)), "--frames", "4")[1]
    assert again["intensities"] == report["intensities"]


def test_eve_flag_overrides_the_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(_config(tmp_path, seed=4))
    code, report = _run(capsys, "-c", path, "--frames", "4", "--eve", "biased-intercept-resend")
    assert code == 0 and report["eavesdropper"] == "biased-intercept-resend:1"
    k = report["intensities"][0]["bases"]
    assert k["T"]["qber"] > 0.3  # the test basis jumps ...
    assert k["K"]["qber"] < 0.1  # ... while the key basis stays near baseline
    assert k["T"]["qber_theory"] == pytest.approx(k["T"]["qber"], abs=0.05)


def test_table_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "-c", str(_config(tmp_path, seed=5)), "--frames", "1"]) == 0
    out = capsys.readouterr().out
    assert "SIMULATED" in out and "slots/s" in out and "signal" in out


@pytest.mark.parametrize("args", [["--eve", "mallory"], ["--frames", "0"]])
def test_usage_errors_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    assert main(["simulate", "-c", str(_config(tmp_path)), *args]) == 2
    assert "qkdd simulate" in capsys.readouterr().err


def test_bad_simulation_section_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _config(tmp_path, channel={"distance_km": -3})
    assert main(["simulate", "-c", str(path)]) == 2
    assert "simulation.channel.distance_km" in capsys.readouterr().err
