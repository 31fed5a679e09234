"""Node parameters: one table of specs per node, declared with descriptors (description, range, read-only).

Every value is checked here (type, range, allowed strings) both at start-up and on later
``ros2 param set`` calls, and a bad value is reported as ``parameter '<name>' = <value>: expected
<range>``. Floating-point parameters accept integers (``max_depth: 80`` in YAML is fine).
``help_text(specs)`` gives the ``--help`` listing without starting ROS.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

Value = bool | int | float | str


class ParameterError(ValueError):
    """A parameter value outside its allowed range or set; the message names the parameter and the range."""


@dataclass(frozen=True)
class ParamSpec:
    """One parameter: name, default (its type is the parameter's type), help and allowed values."""

    name: str
    default: Value
    description: str
    min: float | None = None  # inclusive bounds for int/float parameters
    max: float | None = None
    choices: tuple[str, ...] = ()  # allowed strings ('' entries allowed only if listed)
    pattern: str = ""  # regular expression a string value must match in full (with ``pattern_help``)
    pattern_help: str = ""
    read_only: bool = False  # changing it needs a reload (lifecycle cleanup + configure)

    @property
    def kind(self) -> type:
        return type(self.default)

    def allowed(self) -> str:
        """Human-readable allowed values, e.g. ``a float in [0.01, 1000]`` or ``one of 'a', 'b'``."""
        if self.choices:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if self.pattern:
            return self.pattern_help or f"a string matching {self.pattern!r}"
        kind = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[self.kind]
        if self.min is not None and self.max is not None:
            return f"{kind} in [{_fmt(self.min)}, {_fmt(self.max)}]"
        if self.min is not None:
            return f"{kind} >= {_fmt(self.min)}"
        if self.max is not None:
            return f"{kind} <= {_fmt(self.max)}"
        return kind


def _fmt(number: float) -> str:
    return f"{number:g}"


def coerce(spec: ParamSpec, value: object) -> Value:
    """Check ``value`` against ``spec``; return it in the spec's type or raise :class:`ParameterError`."""
    def fail() -> ParameterError:
        return ParameterError(f"parameter '{spec.name}' = {value!r}: expected {spec.allowed()}")

    if spec.kind is bool:
        if not isinstance(value, bool):
            raise fail()
        return value
    if spec.kind in (int, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise fail()
        if spec.kind is int and not float(value).is_integer():
            raise fail()
        number = spec.kind(value)
        if isinstance(number, float) and not math.isfinite(number):
            raise fail()
        if (spec.min is not None and number < spec.min) or (spec.max is not None and number > spec.max):
            raise fail()
        return number
    if not isinstance(value, str) or (spec.choices and value not in spec.choices) \
            or (spec.pattern and re.fullmatch(spec.pattern, value) is None):
        raise fail()
    return value


def descriptor(spec: ParamSpec):
    """rcl_interfaces ParameterDescriptor for ``spec`` (ranges for numbers, choices in the description)."""
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType

    types = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
             float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING}
    text = spec.description + (f" ({spec.allowed()})" if spec.choices or spec.pattern else "")
    desc = ParameterDescriptor(name=spec.name, type=types[spec.kind], description=text, read_only=spec.read_only,
                               additional_constraints=f"expected {spec.allowed()}")
    lo = spec.min if spec.min is not None else None
    hi = spec.max if spec.max is not None else None
    if spec.kind is int and (lo is not None or hi is not None):
        desc.integer_range = [IntegerRange(from_value=int(lo if lo is not None else -(2**63)),
                                           to_value=int(hi if hi is not None else 2**63 - 1), step=0)]
    if spec.kind is float:
        desc.dynamic_typing = True  # accept integers in YAML; coerce() checks type and range
        if lo is not None or hi is not None:
            desc.floating_point_range = [FloatingPointRange(from_value=float(lo if lo is not None else -math.inf),
                                                            to_value=float(hi if hi is not None else math.inf),
                                                            step=0.0)]
    return desc


def declare(node, specs: Iterable[ParamSpec],
            check: Callable[[dict[str, Value]], None] | None = None) -> dict[str, Value]:
    """Declare ``specs`` on ``node``, validate the values given at start-up, and guard later changes.

    ``check(values)`` validates combinations (e.g. min < max) and raises :class:`ParameterError`.
    Returns the validated values; later accepted changes update the returned dict in place.
    """
    from rcl_interfaces.msg import SetParametersResult
    from rclpy.exceptions import ParameterException

    specs = {spec.name: spec for spec in specs}
    values: dict[str, Value] = {}
    for spec in specs.values():
        try:
            param = node.declare_parameter(spec.name, spec.default, descriptor(spec))
        except ParameterException as exc:
            raise ParameterError(f"parameter '{spec.name}': expected {spec.allowed()} ({exc})") from exc
        values[spec.name] = coerce(spec, param.value)
    if check is not None:
        check(values)

    def on_set(parameters) -> SetParametersResult:
        proposed = dict(values)
        try:
            for parameter in parameters:
                if parameter.name in specs:
                    proposed[parameter.name] = coerce(specs[parameter.name], parameter.value)
            if check is not None:
                check(proposed)
        except ParameterError as exc:
            node.get_logger().error(str(exc))
            return SetParametersResult(successful=False, reason=str(exc))
        values.update(proposed)
        return SetParametersResult(successful=True)

    node.add_on_set_parameters_callback(on_set)
    return values


def help_text(specs: Iterable[ParamSpec]) -> str:
    """Parameter listing for ``--help``: name, default, allowed values, description."""
    lines = []
    for spec in specs:
        flag = " [read-only]" if spec.read_only else ""
        lines.append(f"  {spec.name} (default {spec.default!r}; {spec.allowed()}){flag}\n      {spec.description}")
    return "\n".join(lines)
