"""The body frame's height follows its document (kit.frames.estimated_frame_height)."""

from __future__ import annotations

from mailbeacon.kit.frames import estimated_frame_height, html_document, text_document


def test_a_short_email_gets_a_short_frame_and_a_long_one_a_taller_one() -> None:
    short = estimated_frame_height(html_document("<p>Hello Ann, here is our pricing.</p>"))
    long = estimated_frame_height(html_document("<p>A paragraph of some length.</p>" * 12))
    assert 140 <= short < 200
    assert long > short + 200


def test_text_lines_and_images_count_and_the_height_stays_bounded() -> None:
    lines = estimated_frame_height(text_document("line\n" * 20))
    assert lines > estimated_frame_height(text_document("line\n" * 2))
    with_image = estimated_frame_height(html_document('<p>Hi</p><img src="x.png">'))
    assert with_image > estimated_frame_height(html_document("<p>Hi</p>"))
    assert estimated_frame_height(html_document("<p>x</p>" * 5000)) == 1200
