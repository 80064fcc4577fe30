"""Secret redaction: API keys and private keys never reach the log, the tables, the index or the disk."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from neuralsync.redact import Redactor
from neuralsync.unified_memory_api import UnifiedMemoryAPI

MakeApi = Callable[..., UnifiedMemoryAPI]

PEM = ("-----BEGIN RSA PRIVATE KEY-----\n"
       "MIIEowIBAAKCAQEAzQmZxK3pL9vQwErTyUiOpAsDfGhJkLzXcVbNm1234567890abcd\n"
       "ZmFrZWtleWRhdGFmb3J0ZXN0aW5nb25seW5vdGFyZWFsa2V5\n"
       "-----END RSA PRIVATE KEY-----")
SECRETS = {
    "openai": "sk-" + "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z",
    "openai_project": "sk-proj-" + "Q1w2E3r4T5y6U7i8O9p0A1s2D3f4G5h6J7k8L9z0X1c2V3b4",
    "google": "AIza" + "SyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q",
    "github": "ghp_" + "aB3dE6gH9jK2mN5pQ8sT1vW4yZ7bC0eF3hJ6",
    "aws": "AKIA" + "IOSFODNN7EXAMPLE",
    "pem": PEM,
}
# Fragments of each secret that must not survive anywhere (for the PEM block: its key material).
NEEDLES = {name: (secret.splitlines()[1][:40] if name == "pem" else secret) for name, secret in SECRETS.items()}


def _on_disk(api: UnifiedMemoryAPI) -> bytes:
    db = api.storage.path
    wal = db.with_name(db.name + "-wal")
    return db.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


def _op_bodies(api: UnifiedMemoryAPI) -> bytes:
    return b"".join(body for (body,) in api.storage.conn.execute("SELECT body FROM ops"))


def _assert_gone(api: UnifiedMemoryAPI, needle: str) -> None:
    raw = needle.encode()
    assert raw not in _op_bodies(api)
    assert raw not in _on_disk(api)
    for memory in api.range_recall():
        assert needle not in memory.content
        assert needle not in repr(memory.metadata)
    for mode in ("hybrid", "text", "semantic"):
        assert all(needle not in m.content for m in api.recall(needle, mode=mode))


@pytest.mark.parametrize("name", list(SECRETS))
def test_secret_in_content_is_redacted_before_storing(api: UnifiedMemoryAPI, name: str) -> None:
    mid = api.remember(f"the deploy credential is {SECRETS[name]} keep it safe")
    stored = api.get(mid).content
    assert stored.startswith("the deploy credential is [REDACTED:")
    assert stored.endswith(" keep it safe")
    _assert_gone(api, NEEDLES[name])
    assert [m.id for m in api.recall("deploy credential", mode="text")] == [mid]


@pytest.mark.parametrize("name", list(SECRETS))
def test_secret_in_updated_content_is_redacted(api: UnifiedMemoryAPI, name: str) -> None:
    mid = api.remember("placeholder")
    api.update(mid, content=f"rotated to {SECRETS[name]}")
    assert "[REDACTED:" in api.get(mid).content
    _assert_gone(api, NEEDLES[name])


def test_secrets_in_metadata_are_redacted_at_any_depth(api: UnifiedMemoryAPI) -> None:
    mid = api.remember("has metadata", metadata={"env": {"KEY": SECRETS["openai"]}, "list": [SECRETS["github"]]})
    meta = api.get(mid).metadata
    assert meta["env"]["KEY"].startswith("[REDACTED:")
    assert meta["list"][0].startswith("[REDACTED:")
    _assert_gone(api, NEEDLES["openai"])
    _assert_gone(api, NEEDLES["github"])


def test_secret_in_source_is_redacted(api: UnifiedMemoryAPI) -> None:
    api.remember("cloned the repo", source=f"https://x:{SECRETS['github']}@github.com/o/r")
    _assert_gone(api, NEEDLES["github"])


def test_secret_in_a_tag_is_redacted(api: UnifiedMemoryAPI) -> None:
    api.remember("tagged by mistake", tags=[SECRETS["aws"]])
    _assert_gone(api, NEEDLES["aws"])


def test_secret_in_persona_is_redacted(api: UnifiedMemoryAPI) -> None:
    api.set_persona(f"always use {SECRETS['google']}")
    assert "[REDACTED:" in api.get_persona()
    assert NEEDLES["google"].encode() not in _op_bodies(api)


def test_several_secrets_in_one_text_are_all_redacted(api: UnifiedMemoryAPI) -> None:
    api.remember(" and ".join(SECRETS.values()))
    for needle in NEEDLES.values():
        _assert_gone(api, needle)


def test_redaction_can_be_turned_off(make_api: MakeApi) -> None:
    api = make_api(redact_secrets=False)
    text = f"keep {SECRETS['openai']} and {SECRETS['aws']}"
    mid = api.remember(text)
    assert api.get(mid).content == text
    assert SECRETS["openai"].encode() in _op_bodies(api)


def test_extra_patterns_are_applied(make_api: MakeApi) -> None:
    api = make_api(extra_secret_patterns=(r"corp-[0-9]{6}",))
    mid = api.remember("badge corp-123456 issued")
    assert api.get(mid).content == "badge [REDACTED:custom_0] issued"


@pytest.mark.parametrize("text", [
    "Ask about task-management and desk-booking in the risk-assessment meeting.",
    "The sk- prefix marks OpenAI keys; AKIA marks AWS ones; ghp_ marks GitHub tokens.",
    "Skeleton keys, AIza, and a PRIVATE KEY discussion without any key material.",
    "-----BEGIN CERTIFICATE-----\nMIIBpublicdata\n-----END CERTIFICATE-----",
    "Akiane painted; AKIAL is short; ghp_short; sk-tiny.",
    "Run `pytest -x -k test_skip` then `git push origin main`.",
    "日本語のテキストと emoji 🎉 are untouched.",
])
def test_ordinary_prose_is_untouched(api: UnifiedMemoryAPI, text: str) -> None:
    assert Redactor().redact(text) == text
    assert api.get(api.remember(text)).content == text
