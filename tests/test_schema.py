"""rekkord.schema: bounded JSON and field checks for what is read from a repository."""

import json

import pytest
from hypothesis import given, settings, strategies as st

from rekkord import schema
from rekkord.errors import IntegrityError


@pytest.mark.parametrize("raw", [b"[" * 200_000, b'{"a":' * 100_000, b"1" * 5000, b"\xff\xfe", b"{", b""])
def test_loads_refuses_what_is_not_bounded_json_with_a_typed_error(raw):
    with pytest.raises(IntegrityError, match="obj"):
        schema.loads(raw, "obj", limit=1 << 20)


def test_loads_refuses_objects_beyond_the_limit_before_parsing():
    with pytest.raises(IntegrityError, match="too large"):
        schema.loads(b" " * 101, "obj", limit=100)
    with pytest.raises(IntegrityError, match="not a JSON object"):
        schema.loads_object(b"[1]", "obj")


def test_field_checks_name_the_field():
    d = {"n": 5, "s": "x/y", "h": "AB", "l": [1, "a"], "b": "yes", "t": "a\x1bb", "big": 10**20}
    for key, check, why in [("n", schema.integer(0, 4), "out of range"), ("s", schema.text(name=True), "valid name"),
                            ("h", schema.hexstr(1), "hexadecimal"), ("l", schema.listof(schema.integer(), 5),
                                                                     "item 1"),
                            ("b", schema.boolean, "true or false"), ("t", schema.text(printable=True), "control"),
                            ("missing", schema.integer(), "missing"), ("big", schema.integer(0, 2**63), "range")]:
        with pytest.raises(IntegrityError, match=f"field '{key}' .*{why}"):
            schema.get(d, key, "obj", check)
    assert schema.get(d, "n", "obj", schema.integer(0, 5)) == 5
    assert schema.get(d, "nope", "obj", schema.integer(), optional=True, default=7) == 7
    # bool is not an integer, an integer is not a bool
    assert schema.integer()(True) and schema.boolean(1)


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
                     lambda k: st.lists(k, max_size=5) | st.dictionaries(st.text(max_size=8), k, max_size=5),
                     max_leaves=30)


@settings(max_examples=400, deadline=None)
@given(v=_json)
def test_fuzz_every_check_returns_a_complaint_or_none(v):
    for check in (schema.integer(0, 10), schema.number(0, 1), schema.text(10, name=True, printable=True),
                  schema.hexstr(32), schema.hexstr(max_bytes=4), schema.listof(schema.hexstr(2), 3),
                  schema.mapping(3), schema.blob_ref(100), schema.boolean):
        r = check(v)
        assert r is None or isinstance(r, str)


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=300) | _json.map(lambda v: json.dumps(v).encode()))
def test_fuzz_loads(raw):
    try:
        schema.loads(raw, "x")
    except IntegrityError:
        pass
