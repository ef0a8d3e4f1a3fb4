"""Config loading: every problem is one readable message naming the file and the dotted key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w
from hypothesis import given
from hypothesis import strategies as st

from qkdd.config import ConfigError, Role, load_config, parse_config
from qkdd.instruments.config import TransportAddress, TransportKind

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "config").glob("*.toml"))


def _base(**node: object) -> dict[str, object]:
    return {
        "node": {"id": "a", "role": "alice", "link": "l1", "state_dir": "/tmp/s", **node},
        "instruments": {
            "laser": {"class": "laser", "backend": "simulated"},
            "enc": {"class": "state_encoder", "backend": "simulated"},
            "rng": {"class": "random_source", "backend": "simulated"},
        },
    }


def _error(data: dict[str, object]) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(data, "node.toml")
    return str(caught.value)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_shipped_examples_load(path: Path) -> None:
    config = load_config(path)
    assert config.node.role in (Role.ALICE, Role.BOB)
    assert config.node.state_dir.is_absolute()


def test_relative_state_dir_is_relative_to_the_config_file(tmp_path: Path) -> None:
    data = _base(state_dir="state/alice")
    path = tmp_path / "alice.toml"
    path.write_text(tomli_w.dumps(data | {"node": data["node"] | {"allow_simulated": True}}))
    assert load_config(path).node.state_dir == tmp_path / "state" / "alice"


def test_typo_names_the_key() -> None:
    data = _base(allow_simulated=True)
    data["instruments"]["laser"]["bakend"] = "simulated"  # type: ignore[index]
    assert _error(data) == "node.toml: instruments.laser.bakend: unknown key (a typo?)"


def test_wrong_type_names_the_key_and_value() -> None:
    data = _base(allow_simulated=True)
    data["protocol"] = {"p_key_basis": "lots"}
    message = _error(data)
    assert message.startswith("node.toml: protocol.p_key_basis: ")
    assert "'lots'" in message


def test_bad_transport_address_names_the_key() -> None:
    data = _base(allow_simulated=True)
    data["instruments"]["laser"] = {  # type: ignore[index]
        "class": "laser",
        "driver": "thorlabs-itc4000",
        "address": "USB0::nonsense",
    }
    message = _error(data)
    assert message.startswith("node.toml: instruments.laser.address: not a valid VISA resource")


def test_simulation_refused_when_not_allowed() -> None:
    message = _error(_base())
    assert "instruments.laser.backend: simulated, but node.allow_simulated is false" in message


def test_auto_on_the_quantum_path_refused_without_simulation() -> None:
    data = _base()
    for inst in data["instruments"].values():  # type: ignore[attr-defined]
        inst.update(backend="hardware", driver="x", address="tcp://h:1")
    data["instruments"]["laser"]["backend"] = "auto"  # type: ignore[index]
    assert "instruments.laser.backend: auto may fall back" in _error(data)


def test_missing_role_instruments_named() -> None:
    data = _base(allow_simulated=True)
    del data["instruments"]["enc"]  # type: ignore[attr-defined]
    assert _error(data) == "node.toml: instruments: a alice node needs state_encoder"


def test_intensity_ordering_enforced() -> None:
    data = _base(allow_simulated=True)
    data["protocol"] = {"intensities": {"mu": [0.2, 0.15, 0.1]}}
    assert "μ1 > μ2 + μ3" in _error(data)


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "absent.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[node\nid = 1\n")
    with pytest.raises(ConfigError, match=r"bad.toml: not valid TOML"):
        load_config(bad)


def test_secret_password_never_in_repr() -> None:
    data = _base(allow_simulated=True)
    data["mqtt"] = {"password": "hunter2-secret"}
    config = parse_config(data)
    assert "hunter2-secret" not in repr(config)
    assert "hunter2-secret" not in str(config.model_dump())


@given(st.text(min_size=1, max_size=40))
def test_address_parser_accepts_or_explains(text: str) -> None:
    try:
        address = TransportAddress.parse(text)
    except ValueError as exc:
        assert str(exc)
    else:
        assert address.kind in TransportKind
        assert TransportAddress.parse(str(address)) == address


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("USB0::0x1313::0x804A::M00406458::INSTR", TransportKind.VISA),
        ("TCPIP0::10.0.0.5::5025::SOCKET", TransportKind.VISA),
        ("ASRL/dev/ttyUSB0::INSTR", TransportKind.VISA),
        ("tcp://10.0.0.5:5025", TransportKind.TCP),
        ("tcp://[fe80::1]:5025", TransportKind.TCP),
        ("serial:/dev/ttyUSB0", TransportKind.SERIAL),
        ("serial:loop://", TransportKind.SERIAL),
        ("sdk:1910000ABC", TransportKind.SDK),
        ("device:/dev/qrandom0", TransportKind.DEVICE),
    ],
)
def test_address_forms(text: str, kind: TransportKind) -> None:
    assert TransportAddress.parse(text).kind is kind


@pytest.mark.parametrize(
    ("mutation", "key"),
    [
        ({"node": {"rolee": "alice"}}, "node.rolee"),
        ({"instruments": {"laser": {"timeout_s": -1}}}, "instruments.laser.timeout_s"),
        ({"mqtt": {"port": 70000}}, "mqtt.port"),
        (
            {"instruments": {"laser": {"driver": "nope", "backend": "hardware"}}},
            "instruments.laser",
        ),
    ],
)
def test_cli_check_config_exit_2_one_paragraph(
    tmp_path: Path, mutation: dict[str, dict[str, object]], key: str
) -> None:
    data = _base(allow_simulated=True)
    for section, values in mutation.items():
        target = data.setdefault(section, {})
        for k, v in values.items():
            if isinstance(v, dict):
                target[k] = target[k] | v  # type: ignore[index]
            else:
                target[k] = v  # type: ignore[index]
    path = tmp_path / "node.toml"
    path.write_text(tomli_w.dumps(data))
    proc = subprocess.run(
        [sys.executable, "-m", "qkdd", "check-config", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1
    assert str(path) in proc.stderr and key in proc.stderr


def test_cli_check_config_ok_for_examples() -> None:
    for path in EXAMPLES:
        proc = subprocess.run(
            [sys.executable, "-m", "qkdd", "check-config", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        assert ": ok:" in proc.stdout
