"""Email HTML made safe to show inside the app.

The body is cleaned with nh3 (ammonia): no scripts, no event handlers, no
styles that fetch anything, only http(s)/mailto/tel links. What may stay of
images and links is the caller's decision, through two small functions: the
app uses them to drop its own tracking pixels and to turn its tracked links
back into their destinations, so that showing an email never counts as an open
or a click (DESIGN: "No false self-opens").
"""

from __future__ import annotations

from collections.abc import Callable

import nh3

# A function that returns what an attribute may become (None drops it).
Rewrite = Callable[[str], str | None]

_TAGS = set(nh3.ALLOWED_TAGS) | {"font", "center", "big", "tfoot", "th", "u", "s"}
_ATTRIBUTES: dict[str, set[str]] = {t: set(a) for t, a in nh3.ALLOWED_ATTRIBUTES.items()}
for _tag in (
    "table",
    "td",
    "th",
    "tr",
    "tbody",
    "thead",
    "tfoot",
    "div",
    "p",
    "span",
    "img",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "li",
    "ul",
    "ol",
    "a",
    "font",
    "center",
    "blockquote",
    "pre",
    "hr",
    "b",
    "i",
    "em",
    "strong",
    "u",
    "small",
    "big",
):
    _ATTRIBUTES.setdefault(_tag, set()).update({"style", "align", "width", "height", "title"})
for _tag in ("table", "td", "th", "tr", "tbody", "body", "div"):
    _ATTRIBUTES.setdefault(_tag, set()).update(
        {"bgcolor", "valign", "border", "cellpadding", "cellspacing"}
    )
_ATTRIBUTES.setdefault("font", set()).update({"color", "face", "size"})
# Layout and colour, nothing that fetches: no url() bearers (background, list-style-image,
# content, cursor, filter), no positioning that could draw over the page.
_STYLE_PROPERTIES = {
    "color",
    "background-color",
    "font",
    "font-family",
    "font-size",
    "font-style",
    "font-weight",
    "line-height",
    "letter-spacing",
    "text-align",
    "text-decoration",
    "text-transform",
    "vertical-align",
    "white-space",
    "word-break",
    "margin",
    "margin-top",
    "margin-right",
    "margin-bottom",
    "margin-left",
    "padding",
    "padding-top",
    "padding-right",
    "padding-bottom",
    "padding-left",
    "border",
    "border-top",
    "border-right",
    "border-bottom",
    "border-left",
    "border-color",
    "border-style",
    "border-width",
    "border-collapse",
    "border-spacing",
    "border-radius",
    "width",
    "max-width",
    "min-width",
    "height",
    "max-height",
    "min-height",
    "display",
    "table-layout",
}
_URL_SCHEMES = {"http", "https", "mailto", "tel"}


def _is_data_image(value: str) -> bool:
    return value.strip().lower().startswith("data:image/")


def sanitize_email_html(body: str, *, image_src: Rewrite, link_href: Rewrite) -> str:
    """The body, cleaned; ``image_src`` and ``link_href`` decide every image and link.

    Inline ``data:image/`` pictures stay (they fetch nothing); other ``data:`` links go.
    """

    def keep(tag: str, attribute: str, value: str) -> str | None:
        if tag == "img" and attribute == "src":
            return value if _is_data_image(value) else image_src(value)
        if tag == "a" and attribute == "href":
            if value.strip().lower().startswith("data:"):
                return None
            return link_href(value)
        return value

    return nh3.clean(
        body,
        tags=_TAGS,
        clean_content_tags={"script", "style", "title", "head"},
        attributes=_ATTRIBUTES,
        attribute_filter=keep,
        url_schemes=_URL_SCHEMES | {"data"},
        filter_style_properties=_STYLE_PROPERTIES,
        link_rel="noopener noreferrer",
    )
