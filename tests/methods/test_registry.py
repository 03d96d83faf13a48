from __future__ import annotations

import pytest

from methods.registry import BenchError, Registry, UnknownNameError


def test_register_and_get_with_alias() -> None:
    reg: Registry[int] = Registry("thing")
    reg.add("alpha", 1, "a")
    assert reg.get("alpha") == 1
    assert reg.get("a") == 1
    assert reg.names() == ["alpha"]
    assert "a" in reg


def test_unknown_name_suggests_closest_and_lists_valid() -> None:
    reg: Registry[int] = Registry("method")
    reg.add("zero-shot", 1)
    reg.add("few-shot", 2)
    with pytest.raises(UnknownNameError) as info:
        reg.get("zero-shoot")
    msg = str(info.value)
    assert "did you mean 'zero-shot'" in msg
    assert "valid: few-shot, zero-shot" in msg
    assert "\n" not in msg


def test_duplicate_registration_is_an_error() -> None:
    reg: Registry[int] = Registry("thing")
    reg.add("x", 1)
    with pytest.raises(BenchError, match="registered twice"):
        reg.add("x", 2)


def test_decorator_returns_object() -> None:
    reg: Registry[type] = Registry("thing")

    @reg.register("klass")
    class K:
        pass

    assert reg.get("klass") is K


def test_classes_learn_their_registered_name_subclasses_included() -> None:
    reg: Registry[type] = Registry("thing", name_attr="name")

    @reg.register("parent")
    class Parent:
        name = ""

    @reg.register("child")
    class Child(Parent):
        pass

    assert Parent.name == "parent" and Child.name == "child"
