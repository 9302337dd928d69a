"""Campaign templates: sandboxed, forgiving of missing values, strict about syntax; SMS cost."""

from __future__ import annotations

import pytest

from routing.templates import (
    InvalidTemplate,
    compile_template,
    contact_context,
    sms_cost,
    try_render,
)


def _context(name: str = "Anna Adler", **attributes: object) -> dict[str, object]:
    return contact_context(name, attributes, ["VIP"], "Spring sale")


def test_a_template_names_the_contact_its_attributes_and_the_campaign() -> None:
    template = compile_template(
        "sms",
        {"body": "{{ first_name }} {{ last_name }}, {{ attributes.city }}: {{ campaign.name }}"},
    )

    assert template.render(_context(city="Berlin")) == {"body": "Anna Adler, Berlin: Spring sale"}


def test_missing_values_render_as_nothing_or_their_default() -> None:
    template = compile_template(
        "telegram",
        {"body": "Hi {{ first_name | default('there') }}{{ attributes.city.district }}!"},
    )

    assert template.render(_context(name="")) == {"body": "Hi there!"}


def test_a_syntax_error_is_found_at_compile_time_with_its_part_and_line() -> None:
    with pytest.raises(InvalidTemplate) as raised:
        compile_template("email", {"subject": "Hi", "text": "one\ntwo {{ name }\nthree"})

    assert raised.value.part == "text"
    assert raised.value.line == 2


@pytest.mark.parametrize(
    ("channel", "raw"),
    [
        ("email", {"subject": "Hi"}),
        ("sms", {"body": ""}),
        ("sms", {"body": "x", "subject": "y"}),
        ("fax", {"body": "x"}),
        ("sms", "just text"),
    ],
)
def test_an_incomplete_template_is_refused(channel: str, raw: object) -> None:
    with pytest.raises(InvalidTemplate):
        compile_template(channel, raw)


def test_the_sandbox_refuses_python_internals_as_a_render_error() -> None:
    template = compile_template("sms", {"body": "{{ name.__class__.__mro__[1].__subclasses__() }}"})

    rendered, error = try_render(template, _context())

    assert rendered is None
    assert error is not None and "SecurityError" in error


def test_a_runtime_error_is_one_contact_s_error_not_an_exception() -> None:
    template = compile_template("sms", {"body": "{{ 10 // attributes.n }}"})

    assert try_render(template, _context(n=0))[1] is not None
    assert try_render(template, _context(n=5)) == ({"body": "2"}, None)


def test_html_is_escaped_and_text_is_not() -> None:
    template = compile_template(
        "email", {"subject": "{{ name }}", "text": "{{ name }}", "html": "<p>{{ name }}</p>"}
    )

    rendered = template.render(_context(name="Tom & <Jerry>"))

    assert rendered["text"] == "Tom & <Jerry>"
    assert rendered["html"] == "<p>Tom &amp; &lt;Jerry&gt;</p>"


@pytest.mark.parametrize(
    ("text", "encoding", "segments", "characters"),
    [
        ("Hello", "GSM-7", 1, 5),
        ("x" * 160, "GSM-7", 1, 160),
        ("x" * 161, "GSM-7", 2, 161),
        ("€" * 80, "GSM-7", 1, 80),  # extension characters take two septets
        ("€" * 81, "GSM-7", 2, 81),
        ("Grüße aus Köln", "GSM-7", 1, 14),  # ü, ß and ö are in the GSM alphabet
        ("Łódź", "UCS-2", 1, 4),
        ("ä" * 70, "GSM-7", 1, 70),
        ("ł" * 70, "UCS-2", 1, 70),
        ("ł" * 71, "UCS-2", 2, 71),
        ("😀" * 35, "UCS-2", 1, 35),  # a surrogate pair is two units
        ("😀" * 36, "UCS-2", 2, 36),
    ],
)
def test_sms_encoding_and_segments(
    text: str, encoding: str, segments: int, characters: int
) -> None:
    cost = sms_cost(text)

    assert (cost.encoding, cost.segments, cost.characters) == (encoding, segments, characters)
