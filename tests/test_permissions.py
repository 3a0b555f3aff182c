"""Pure rules as tables: permissions, prefixed ids, storage path segments, API key parsing."""

from __future__ import annotations

import base64
import hashlib
import uuid

import pytest

from picstore import auth, errors, ids, paths
from picstore.permissions import ALL, Grant, allows, covers, scope

A = uuid.UUID(int=1)
B = uuid.UUID(int=2)


def g(permission: str, project: uuid.UUID | None = None) -> Grant:
    return Grant(permission, project)


# permissions.allows: (grants, permission, project asked about, allowed?)
ALLOWS = [
    ((), "project:read", A, False),
    ((g("project:read"),), "project:read", A, True),  # team-wide covers every project
    ((g("project:read"),), "project:read", None, True),  # ... and team-global objects
    ((g("project:read", A),), "project:read", A, True),
    ((g("project:read", A),), "project:read", B, False),
    ((g("project:read", A),), "project:read", None, False),  # a project grant is not team-wide
    ((g("project:read", A), g("project:read", B)), "project:read", B, True),
    ((g("team:admin"),), "storage_location:write", A, True),
    ((g("team:admin"),), "team:write", None, True),
    ((g("team:admin", A),), "image:create", A, True),
    ((g("team:admin", A),), "image:create", B, False),
    ((g("team:admin", A),), "team:write", None, False),
    # Implications: writers may read back what they wrote.
    ((g("project:write", A),), "project:read", A, True),
    ((g("image:create", A),), "project:read", A, True),
    ((g("image:edit", A),), "project:read", A, True),
    ((g("conversion_profile:write", A),), "project:read", A, True),
    ((g("storage_location:write"),), "project:read", B, True),
    ((g("image:create", A),), "project:read", B, False),
    # ... but nothing else: no implication goes upwards or sideways.
    ((g("image:create", A),), "project:write", A, False),
    ((g("project:read", A),), "project:write", A, False),
    ((g("project:write", A),), "image:create", A, False),
    ((g("project:write"),), "storage_location:write", A, False),
    ((g("team:write"),), "project:read", A, False),
    ((g("team:write"),), "team:admin", None, False),
    ((g("project:create"),), "project:write", A, False),
]


@pytest.mark.parametrize(("grants", "permission", "project", "expected"), ALLOWS)
def test_allows(
    grants: tuple[Grant, ...], permission: str, project: uuid.UUID | None, expected: bool
) -> None:
    assert allows(grants, permission, project) is expected


# permissions.scope: (grants, permission, everywhere, projects)
SCOPES = [
    ((), "project:read", False, set()),
    ((g("project:read", A), g("image:create", B)), "project:read", False, {A, B}),
    ((g("project:read", A), g("project:read")), "project:read", True, {A}),
    ((g("team:admin"),), "image:edit", True, set()),
    ((g("image:create", A),), "image:edit", False, set()),
    ((g("project:write", B),), "project:write", False, {B}),
]


@pytest.mark.parametrize(("grants", "permission", "everywhere", "projects"), SCOPES)
def test_scope(
    grants: tuple[Grant, ...], permission: str, everywhere: bool, projects: set[uuid.UUID]
) -> None:
    found = scope(grants, permission)
    assert found.everywhere is everywhere
    assert found.projects == projects
    assert found.empty is (not everywhere and not projects)


# permissions.covers: may `holder` hand out `wanted`?
COVERS = [
    ((g("team:admin"),), g("team:admin"), True),
    ((g("team:admin"),), g("image:create", A), True),
    ((g("team:write"),), g("team:admin"), False),
    ((g("team:write"),), g("team:write"), True),
    ((g("team:write"),), g("project:read", A), False),
    ((g("project:read"),), g("project:read", A), True),
    ((g("project:read", A),), g("project:read"), False),  # a project grant cannot become team-wide
    ((g("project:read", A),), g("project:read", B), False),
    ((g("project:write", A),), g("project:read", A), True),  # implied permissions can be given
    ((g("image:create", A),), g("image:edit", A), False),
    ((g("team:admin", A),), g("storage_location:write", A), True),
    ((g("team:admin", A),), g("storage_location:write"), False),
]


@pytest.mark.parametrize(("holder", "wanted", "expected"), COVERS)
def test_covers(holder: tuple[Grant, ...], wanted: Grant, expected: bool) -> None:
    assert covers(holder, wanted) is expected


def test_admin_allows_every_permission_everywhere() -> None:
    for permission in ALL:
        assert allows((g("team:admin"),), permission, A)
        assert allows((g("team:admin"),), permission, None)


# ids

PREFIXES = [
    ids.TEAM,
    ids.ROLE,
    ids.USER,
    ids.PROJECT,
    ids.CONVERSION_PROFILE,
    ids.STORAGE_LOCATION,
    ids.UPLOAD_PROFILE,
    ids.BASE_IMAGE,
    ids.OUTPUT_IMAGE,
    ids.API_KEY,
]


@pytest.mark.parametrize("prefix", PREFIXES)
def test_id_round_trip(prefix: str) -> None:
    value = ids.new_uuid()
    text = ids.format_id(prefix, value)
    assert text.startswith(prefix)
    assert len(text) == len(prefix) + 22
    assert ids.parse_id(prefix, text) == value


def test_plain_uuid_is_accepted() -> None:
    value = uuid.uuid4()
    assert ids.parse_id(ids.PROJECT, str(value)) == value
    assert ids.parse_id(ids.PROJECT, value.hex) == value


def test_new_ids_sort_by_creation() -> None:
    made = [ids.new_uuid() for _ in range(50)]
    assert [m.bytes[:6] for m in made] == sorted(m.bytes[:6] for m in made)
    assert len(set(made)) == 50
    assert all(m.version == 7 for m in made)


@pytest.mark.parametrize(
    "text",
    [
        ids.format_id(ids.USER, uuid.UUID(int=5)),  # the right shape, the wrong type
        "prj",
        "",
        "global",
        "prj" + "!" * 22,
        "prj" + "A" * 21,
        "prj" + "A" * 23,
        "prj" + "A" * 22 + "\x00",
        "not-a-uuid-at-all-0000000000000000",
    ],
)
def test_invalid_ids_are_refused(text: str) -> None:
    with pytest.raises(ids.InvalidId):
        ids.parse_id(ids.PROJECT, text)


# paths

CLEAN = [
    (None, ""),
    ("", ""),
    ("/", ""),
    ("  images  ", "images"),
    ("/a/b/", "a/b"),
    ("a.b_c~d-e/F9", "a.b_c~d-e/F9"),
]


@pytest.mark.parametrize(("value", "expected"), CLEAN)
def test_clean_segment_accepts(value: str | None, expected: str) -> None:
    assert paths.clean_segment(value, "field") == expected


@pytest.mark.parametrize(
    "value",
    ["..", "../etc", "a/../b", "a/./b", ".", "a//b", "a b", "a%2Fb", "a\\b", "é", "a?b", "a#b", "a\x00b"],
)
def test_clean_segment_refuses(value: str) -> None:
    with pytest.raises(errors.Invalid) as caught:
        paths.clean_segment(value, "base_location")
    assert caught.value.message.startswith("base_location: ")


JOINS = [
    (("a", "b", "c.jpg"), "a/b/c.jpg"),
    (("a/", "/b/", "/c.jpg"), "a/b/c.jpg"),
    (("", None, "b", "", "c"), "b/c"),
    (("/", "x"), "x"),
    ((), ""),
]


@pytest.mark.parametrize(("parts", "expected"), JOINS)
def test_join_never_doubles_slashes(parts: tuple[str | None, ...], expected: str) -> None:
    joined = paths.join(*parts)
    assert joined == expected
    assert "//" not in joined


def test_public_url_has_one_slash_and_quotes() -> None:
    assert paths.public_url("https://cdn.example.com/", "/a b/c.jpg") == "https://cdn.example.com/a%20b/c.jpg"


# API keys


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_new_key_parses_to_its_id_and_digest() -> None:
    key = auth.new_key()
    parsed = auth.parse_key(key)
    assert len(key) == 49
    assert key.startswith("ps1.")
    assert parsed.id == uuid.UUID(bytes=base64.urlsafe_b64decode(key.split(".")[1] + "=="))
    assert parsed.digest == hashlib.sha256(key.encode()).digest()
    assert parsed.prefix == key[:16]
    assert auth.new_key() != key


BAD_KEYS = [
    "",
    "ps1",
    "ps2." + _b64(bytes(16)) + "." + _b64(bytes(16)),  # wrong version
    "ps1x" + _b64(bytes(16)) + "." + _b64(bytes(16)),  # version without its dot
    "ps1." + _b64(bytes(16)) + "." + _b64(bytes(16)) + "A",  # too long
    "ps1." + _b64(bytes(16)) + "." + _b64(bytes(15)),  # too short
    "ps1." + _b64(bytes(16)) + _b64(bytes(16)) + ".",  # dots in the wrong place
    "ps1." + "!" * 22 + "." + _b64(bytes(16)),  # not base64
    "ps1." + "é" * 22 + "." + _b64(bytes(16)),  # not ASCII
    "ps1." + _b64(bytes(16)) + "." + "*" * 22,
    "ps1." + _b64(bytes(16)) + ".." + _b64(bytes(16))[1:],
]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_malformed_keys_are_unauthenticated(key: str) -> None:
    with pytest.raises(errors.Unauthenticated):
        auth.parse_key(key)


BEARER = [
    ("Bearer ps1.abc", "ps1.abc"),
    ("bearer  ps1.abc ", "ps1.abc"),
    ("BEARER ps1.abc", "ps1.abc"),
]


@pytest.mark.parametrize(("header", "token"), BEARER)
def test_bearer_token(header: str, token: str) -> None:
    assert auth.bearer_token(header) == token


@pytest.mark.parametrize(
    "header", [None, "", "Bearer", "Bearer   ", "Basic dXNlcjpwdw==", "ps1.abc", "Token ps1.abc"]
)
def test_bearer_token_refuses(header: str | None) -> None:
    with pytest.raises(errors.Unauthenticated):
        auth.bearer_token(header)


def test_password_hash_is_argon2id_and_verifies() -> None:
    hashed = auth.hash_password("correct horse")
    assert hashed.startswith("$argon2id$")
    assert auth.verify_password(hashed, "correct horse")
    assert not auth.verify_password(hashed, "wrong horse")
    assert not auth.verify_password("not a hash", "correct horse")
