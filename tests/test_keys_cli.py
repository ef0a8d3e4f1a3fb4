"""``qkdd keys list``: metadata by default, material only with --reveal (and a warning)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np

from qkdd.auth import AuthSession, ReplenishmentRule, load_auth_state
from qkdd.link.keys import BlockKeys, KeyMetadata, split_block
from qkdd.store import Direction, StateStore
from tests.daemonpair import LINK, SMALL_PROTOCOL, free_port, init_secret, node_config, qkdd


def _store_keys(tmp_path: Path) -> tuple[Path, list[bytes]]:
    init_secret(tmp_path)
    config = node_config(tmp_path, "alice", free_port(), SMALL_PROTOCOL)
    store = StateStore.open(tmp_path / "alice")
    try:
        load_auth_state(store, role="alice", link=LINK)
        session = AuthSession(store)
        keys = BlockKeys(store, session, link=LINK, slots=("default",))
        block = keys.keys.allocate_block(LINK)
        secret = np.random.default_rng(5).integers(0, 2, 3 * 256 + 100, dtype=np.uint8)
        need = dict.fromkeys((Direction.ALICE_TO_BOB, Direction.BOB_TO_ALICE), 0)
        split = split_block(secret.size, need, 256, ReplenishmentRule())
        meta = KeyMetadata(qber=0.03, eps_sec=1e-10, eps_cor=1e-15, eps_auth=1e-25, simulated=True)
        keys.stage(block, secret, split, meta)
        keys.commit(block)
        expected = [bytes(np.packbits(secret[i * 256 : (i + 1) * 256])) for i in range(3)]
        session.close()
    finally:
        store.close()
    return config, expected


def test_list_shows_metadata_never_material(tmp_path: Path) -> None:
    config, expected = _store_keys(tmp_path)
    out = qkdd("keys", "list", "-c", str(config), "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["link"] == LINK and len(doc["keys"]) == 3
    row = doc["keys"][0]
    assert set(row) == {
        "key_id", "bits", "block", "index", "qber", "eps_total", "created", "simulated",
        "consumer_slot", "state",
    }  # fmt: skip
    assert row["bits"] == 256 and row["state"] == "committed" and row["simulated"] is True
    assert abs(row["eps_total"] - (1e-10 + 1e-15 + 1e-25)) < 1e-20
    for key in expected:
        assert base64.b64encode(key).decode() not in out.stdout + out.stderr
        assert key.hex() not in out.stdout + out.stderr
    text = qkdd("keys", "list", "-c", str(config))
    assert text.returncode == 0 and "SIMULATED" in text.stdout
    assert base64.b64encode(expected[0]).decode() not in text.stdout


def test_reveal_prints_material_with_warning(tmp_path: Path) -> None:
    config, expected = _store_keys(tmp_path)
    out = qkdd("keys", "list", "-c", str(config), "--json", "--reveal")
    assert out.returncode == 0
    assert "WARNING" in out.stderr and "secret" in out.stderr
    keys = [base64.b64decode(k["key"]) for k in json.loads(out.stdout)["keys"]]
    assert keys == expected


def test_missing_store_and_bad_config(tmp_path: Path) -> None:
    config = node_config(tmp_path, "bob", free_port(), SMALL_PROTOCOL)
    out = qkdd("keys", "list", "-c", str(config))
    assert out.returncode == 1 and "no state store" in out.stderr
    out = qkdd("keys", "list", "-c", str(tmp_path / "nope.toml"))
    assert out.returncode == 2
