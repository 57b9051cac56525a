"""Registry.build: the one way every kind of registered object is built from a recipe value."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest

from gradsurg.errors import ConfigError
from gradsurg.registry import Registry


class Shape:
    name: ClassVar[str] = ""


def make_registry() -> Registry[type[Shape]]:
    registry: Registry[type[Shape]] = Registry("shape", "gradsurg.test_shapes", base=Shape)

    @registry.register
    @dataclass
    class Square(Shape):
        name: ClassVar[str] = "square"
        sides: int
        side: float = 1.0

        def __post_init__(self) -> None:
            if self.side <= 0:
                raise ValueError("side must be positive")

    @registry.register("unit")
    def unit(sides: int) -> Square:
        return Square(sides)

    return registry


def test_bare_decorator_registers_under_the_class_name_attribute() -> None:
    registry = make_registry()
    assert registry.names() == ["square", "unit"]
    with pytest.raises(TypeError, match="no 'name' attribute"):
        registry.register(object)


def test_build_from_a_name_or_a_mapping_passes_context_before_options() -> None:
    registry = make_registry()
    built = registry.build({"name": "square", "side": 2.5}, 4, where="key 'shape'")
    assert (built.sides, built.side) == (4, 2.5)
    nested = registry.build({"name": "square", "params": {"side": 2.5}}, 4, where="x")
    assert nested.side == 2.5  # the `params:` nesting earlier recipes wrote
    assert registry.build("unit", sides=3, where="key 'shape'").sides == 3
    instance = registry.build("square", 4, where="x")
    assert registry.build(instance, 9, where="x") is instance  # a built object passes through


@pytest.mark.parametrize(("spec", "message"), [
    ("circle", "key 'shape': unknown shape 'circle'; allowed: square, unit"),
    ({"name": "square", "colour": "red"}, "key 'shape' (shape 'square'): got an unexpected "
                                          "keyword argument 'colour'; options are side"),
    ({"name": "square", "sides": 5}, "key 'shape' (shape 'square'): multiple values for "
                                     "argument 'sides'; options are side"),
    ({"name": "square", "side": -1}, "key 'shape' (shape 'square'): invalid options "
                                     "{'side': -1} (side must be positive)"),
    (3, "key 'shape': expected a shape name or a mapping with 'name', got 3"),
    ({"side": 2}, "key 'shape': expected a shape name or a mapping with 'name'"),
])
def test_every_bad_spec_is_one_line_naming_the_key(spec: object, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        make_registry().build(spec, 4, where="key 'shape'")
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_config_errors_of_the_factory_get_the_key_once() -> None:
    registry: Registry[object] = Registry("thing", "gradsurg.test_things")

    @registry.register("picky")
    def picky() -> None:
        raise ConfigError("picky refuses")

    with pytest.raises(ConfigError, match=r"^key 'x': picky refuses$"):
        registry.build("picky", where="key 'x'")


def test_first_changed_key_names_the_nested_key_that_changed() -> None:
    from gradsurg.run_folder import first_changed_key, value_at

    saved = {"optimizer": {"name": "adamw", "lr": 2e-5}, "seed": 1, "sweep": [0.1]}
    current = {"optimizer": {"name": "adamw", "lr": 0.5}, "seed": 1, "sweep": [0.2]}
    assert first_changed_key(saved, current, ignore=frozenset({"sweep"})) == "optimizer.lr"
    assert value_at(current, "optimizer.lr") == 0.5 and value_at(saved, "optimizer.eps") is None
    assert first_changed_key(saved, saved) is None
    assert first_changed_key({"lr": 2e-5}, {"optimizer": {"lr": 2e-5}}) == "lr"  # old recipe
