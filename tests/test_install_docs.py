"""docs/install.md matches the code: every qkdd command line it shows parses with the real
parser, its config snippet validates on top of config/lab-example.toml, every alarm the
code defines is in its table with the right level, every metric it lists is rendered,
and every repository file it installs exists."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import tomllib
from pathlib import Path

import pytest

from qkdd.cli import build_parser
from qkdd.config import parse_config
from qkdd.health import HealthRecorder
from qkdd.link.alarm_kinds import AlarmKind
from qkdd.metrics import render

REPO = Path(__file__).resolve().parent.parent
DOC = (REPO / "docs" / "install.md").read_text()


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOC, flags=re.S)


def _command_lines() -> list[str]:
    lines = []
    for block in _blocks("sh"):
        joined = block.replace("\\\n", " ")
        for raw in joined.splitlines():
            line = re.sub(r"^sudo -u qkdd ", "", raw.split(" #", 1)[0].strip())
            if line.startswith("qkdd "):
                lines.append(line)
    return lines


def test_every_qkdd_command_line_parses() -> None:
    lines = _command_lines()
    assert {ln.split()[1] for ln in lines} >= {
        "init-secret", "consumer", "status", "check-config", "devices",
    }  # fmt: skip
    parser = build_parser()
    for line in lines:
        argv = shlex.split(line)[1:]
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            try:
                args = parser.parse_args(argv)
            except SystemExit as exc:
                if exc.code == 0 and argv == ["--version"]:
                    continue
                pytest.fail(f"{line!r} does not parse: {err.getvalue()}")
        assert getattr(args, "func", None) is not None, line


def test_config_snippet_validates_on_the_lab_example(tmp_path: Path) -> None:
    data = tomllib.loads((REPO / "config" / "lab-example.toml").read_text())
    snippets = [tomllib.loads(b) for b in _blocks("toml")]
    assert snippets
    for snippet in snippets:
        for key, value in snippet.items():
            data[key] = value
    data["node"]["state_dir"] = "/var/lib/qkdd/link1"
    config = parse_config(data)
    assert config.peer is not None and [c.name for c in config.consumers] == ["kms"]
    assert config.metrics.listen == "127.0.0.1:9464"
    assert str(config.metrics.textfile).startswith("/var/lib/prometheus/node-exporter/")


def _alarm_rows() -> dict[str, str]:
    rows = re.findall(r"^\| `([a-z_]+)` \| (abort|warning) \|", DOC, flags=re.M)
    return dict(rows)


def test_alarm_table_lists_every_alarm_with_its_level() -> None:
    assert _alarm_rows() == {kind.value: kind.level.value for kind in AlarmKind}


def test_metric_table_matches_what_is_rendered(tmp_path: Path) -> None:
    recorder = HealthRecorder(
        tmp_path, node="n", link="l", role="bob", simulated=False, mqtt_connected=lambda: True
    )
    rendered = set(re.findall(r"^# TYPE (\S+)", render(recorder.snapshot()), flags=re.M))
    documented = set(re.findall(r"`(qkdd_[a-z_]+)", DOC.split("## 11.")[1].split("## 12.")[0]))
    assert documented == rendered


def test_files_it_installs_exist_and_paths_match_the_unit() -> None:
    for path in re.findall(r"(?<![/\w])((?:systemd|config)/[\w@./-]+\w)", DOC):
        assert (REPO / path).exists(), path
    unit = (REPO / "systemd" / "qkdd@.service").read_text()
    assert "ExecStart=/usr/local/bin/qkdd run -c /etc/qkdd/%i.toml" in unit
    assert "StateDirectory=qkdd/%i" in unit
    assert "ln -s /opt/qkdd/bin/qkdd /usr/local/bin/qkdd" in DOC
    assert 'state_dir = "/var/lib/qkdd/link1"' in DOC
    mosquitto = (REPO / "config" / "mosquitto" / "mosquitto.conf").read_text()
    for name in ("ca.crt", "server.crt", "server.key"):
        assert f"/etc/mosquitto/qkdd/{name}" in mosquitto
    lab = (REPO / "config" / "lab-example.toml").read_text()
    for path in re.findall(r"(/etc/qkdd/(?:tls/[\w.-]+|mqtt-password))", DOC):
        assert path in lab, path
