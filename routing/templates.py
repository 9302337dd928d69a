"""Campaign templates: personalised text in a sandboxed Jinja2, and what an SMS will cost.

Templates are written by marketing people, not programmers, and run on the server, so they run
in Jinja2's `SandboxedEnvironment` (no attribute access to Python internals). A value a
contact lacks renders as nothing (or as the template's own `default(…)`), never as an error:
a campaign must not stop at the 40,000th contact because one has no first name. What is wrong
with the template itself (syntax) is found when it is checked, at create or preview time.

SMS: GSM 03.38 (3GPP TS 23.038) 7-bit when every character is in its default alphabet or
extension table (extension characters take two septets), else UCS-2 (UTF-16 code units).
One message carries 160 septets or 70 units; a longer text is split into segments of 153 or
67, the rest being the concatenation header (3GPP TS 23.040, UDH).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import ChainableUndefined, Template, TemplateError, TemplateSyntaxError
from jinja2.sandbox import SandboxedEnvironment

# The parts of a template per channel: the first is required.
CHANNEL_PARTS: Mapping[str, tuple[str, ...]] = {
    "sms": ("body",),
    "telegram": ("body",),
    "email": ("subject", "text", "html"),
}
REQUIRED_PARTS: Mapping[str, tuple[str, ...]] = {
    "sms": ("body",),
    "telegram": ("body",),
    "email": ("subject", "text"),
}

_ENVIRONMENT = SandboxedEnvironment(undefined=ChainableUndefined, autoescape=False)
_HTML_ENVIRONMENT = SandboxedEnvironment(undefined=ChainableUndefined, autoescape=True)

GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = frozenset("^{}\\[~]|€\f")


class InvalidTemplate(ValueError):
    """A template that does not compile: which part, which line, and why."""

    def __init__(self, part: str, line: int | None, detail: str) -> None:
        super().__init__(f"{part}, line {line}: {detail}" if line else f"{part}: {detail}")
        self.part = part
        self.line = line
        self.detail = detail


@dataclass(frozen=True, slots=True)
class CampaignTemplate:
    """A checked template of one channel: each part compiled once."""

    channel: str
    parts: Mapping[str, Template]

    def render(self, context: Mapping[str, Any]) -> dict[str, str]:
        """Every part rendered; raises `TemplateError` for an error at run time (`1/0`, a
        forbidden attribute), which the caller records for that one contact."""
        return {name: template.render(context) for name, template in self.parts.items()}


def compile_template(channel: str, raw: object) -> CampaignTemplate:
    """`raw` as the API takes it (`{"body"}`, or `{"subject", "text", "html"?}`), checked."""
    parts = CHANNEL_PARTS.get(channel)
    if parts is None:
        raise InvalidTemplate("channel", None, f"Campaigns cannot send on {channel!r}.")
    if not isinstance(raw, Mapping):
        raise InvalidTemplate("template", None, "The template must be an object.")
    unknown = set(raw) - set(parts)
    if unknown:
        raise InvalidTemplate(
            "template", None, f"A {channel} template has {', '.join(parts)}, not {sorted(unknown)}."
        )
    compiled: dict[str, Template] = {}
    for name in parts:
        source = raw.get(name)
        if source is None and name not in REQUIRED_PARTS[channel]:
            continue
        if not isinstance(source, str) or not source.strip():
            raise InvalidTemplate(name, None, f"'{name}' must be a non-empty string.")
        environment = _HTML_ENVIRONMENT if name == "html" else _ENVIRONMENT
        try:
            compiled[name] = environment.from_string(source)
        except TemplateSyntaxError as error:
            raise InvalidTemplate(name, error.lineno, error.message or "syntax error") from None
    return CampaignTemplate(channel, compiled)


def contact_context(
    name: str, attributes: Mapping[str, Any], tags: list[str], campaign: str
) -> dict[str, Any]:
    """What a template may name: `name`, `first_name`, `last_name`, `tags`, `attributes.x`
    (also as `contact.…`), and `campaign.name`. An empty name part is left out, so that it is
    undefined and `default(…)` applies."""
    first, _, last = name.strip().partition(" ")
    parts = {"name": name.strip(), "first_name": first, "last_name": last.strip()}
    contact = {
        **{key: value for key, value in parts.items() if value},
        "tags": list(tags),
        "attributes": dict(attributes),
    }
    return {**contact, "contact": contact, "campaign": {"name": campaign}}


def try_render(
    template: CampaignTemplate, context: Mapping[str, Any]
) -> tuple[dict[str, str] | None, str | None]:
    """`(rendered parts, None)`, or `(None, the error in words)` when rendering raises."""
    try:
        return template.render(context), None
    except TemplateError as error:
        return None, f"{type(error).__name__}: {error.message}"
    except (ArithmeticError, TypeError, ValueError, LookupError) as error:
        return None, f"{type(error).__name__}: {error}"


@dataclass(frozen=True, slots=True)
class SmsCost:
    encoding: str  # "GSM-7" or "UCS-2"
    segments: int
    characters: int

    def to_json(self) -> dict[str, Any]:
        return {"encoding": self.encoding, "segments": self.segments, "characters": self.characters}


def sms_cost(text: str) -> SmsCost:
    """How a text goes out as SMS: its encoding, segments, and characters (code points)."""
    if all(c in GSM7_BASIC or c in GSM7_EXTENSION for c in text):
        units = sum(2 if c in GSM7_EXTENSION else 1 for c in text)
        single, part, encoding = 160, 153, "GSM-7"
    else:
        units = len(text.encode("utf-16-le")) // 2
        single, part, encoding = 70, 67, "UCS-2"
    segments = 1 if units <= single else -(-units // part)
    return SmsCost(encoding, segments, len(text))
