"""The generic registry: checked names, aliases, base classes, and the CLI fed from it."""

import pytest

from genbench.core.errors import GenbenchError, UnknownNameError
from genbench.core.registry import Registry


class Base:
    pass


class Child(Base):
    pass


def test_register_get_and_alias():
    reg: Registry[type[Base]] = Registry("widget", base=Base)
    reg.add("child", Child, aliases=("kid",))
    assert reg.get("child") is Child and reg.get("kid") is Child
    assert reg.canonical("kid") == "child"
    assert reg.names() == ["child"] and reg.choices() == ["child", "kid"]
    assert reg.aliases("child") == ["kid"]
    assert "kid" in reg and "nope" not in reg and len(reg) == 1


@pytest.mark.parametrize("name", ["Bad", "1abc", "with-dash", "", "sp ace"])
def test_malformed_names_rejected(name):
    with pytest.raises(ValueError, match="malformed"):
        Registry("widget").add(name, object())


def test_duplicates_rejected_across_names_and_aliases():
    reg = Registry("widget")
    reg.add("one", 1, aliases=("uno",))
    for name, aliases in [("one", ()), ("uno", ()), ("two", ("one",)), ("three", ("x", "x"))]:
        with pytest.raises(ValueError):
            reg.add(name, 2, aliases=aliases)
    assert reg.names() == ["one"]


def test_wrong_base_class_rejected():
    reg = Registry("widget", base=Base)
    with pytest.raises(TypeError, match="must be a Base"):
        reg.add("x", int)
    inst = Registry("thing", base=Base)
    inst.add("ok", Child())
    with pytest.raises(TypeError):
        inst.add("bad", 3)


def test_unknown_name_lists_choices():
    reg = Registry("widget")
    reg.add("alpha", 1)
    reg.add("beta", 2)
    with pytest.raises(UnknownNameError) as info:
        reg.get("gamma")
    assert str(info.value) == "unknown widget 'gamma'; valid choices: alpha, beta"
    assert isinstance(info.value, GenbenchError)  # a usage error: one line, exit 2
    with pytest.raises(UnknownNameError) as info:
        reg.canonical("gamma", where="spec.toml: models.x.generator")
    assert str(info.value).startswith("spec.toml: models.x.generator: unknown widget 'gamma'")


def test_builtin_registries_feed_bench_list(cli):
    from genbench.generators import GENERATORS

    result = cli("list")
    assert result.code == 0
    gen_line = next(line for line in result.out.splitlines() if line.startswith("generators:"))
    for name in GENERATORS.names():
        assert name in gen_line
    assert "dcgan (alias gan)" in gen_line
    assert "digits" in result.out and "smoke" in result.out and "cifar10" in result.out
