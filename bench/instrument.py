#!/usr/bin/env python3
"""Instrumentation speed over the HTML corpus beside pytracking's adapt_html, same run.

    .venv/bin/pip install -e '.[bench]'      # pytracking with lxml
    .venv/bin/python bench/instrument.py [--rounds 7] [--corpus ../shared/corpus/html] [--breakdown]

Prints emails/s for pytracking.adapt_html and for mailbeacon's instrument(), both
for a body seen for the first time (caches cleared: what the first copy of a new
email costs) and per personalised copy of the same body (what each further
recipient of a send costs). Best of N rounds, to damp noise from the machine.

With --breakdown it also prints where the first copy's time goes, in microseconds per
email: the scanner's regular expression alone, the rest of the scan (reading link tags,
conditional comments), planning the positions (is each destination trackable, anchor
texts), and the copy itself (tokens, pixel, splicing).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.fernet import Fernet

from mailbeacon.tracking import html_links
from mailbeacon.tracking import instrument as inst
from mailbeacon.tracking.charset import decode_html_bytes
from mailbeacon.tracking.tokens import TokenCodec

ROOT = Path(__file__).resolve().parents[1]
BASE = "https://t.example.com"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--copies", type=int, default=20)
    parser.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "corpus" / "html")
    parser.add_argument("--breakdown", action="store_true")
    args = parser.parse_args()
    import pytracking
    from pytracking.html import adapt_html

    files = sorted(p for p in args.corpus.iterdir() if p.is_file())
    docs = [decode_html_bytes(p.read_bytes())[0] for p in files]
    codec = TokenCodec([(1, os.urandom(64))])
    config = pytracking.Configuration(
        base_open_tracking_url=f"{BASE}/o/",
        base_click_tracking_url=f"{BASE}/c/",
        encryption_bytestring_key=Fernet.generate_key(),
    )
    failures = 0

    def reference() -> float:
        nonlocal failures
        failures = 0
        start = time.perf_counter()
        for i, doc in enumerate(docs):
            try:
                adapt_html(doc, {"copy": i}, configuration=config)
            except Exception:
                failures += 1  # lxml finds no <body> in a few fragments
        return len(docs) / (time.perf_counter() - start)

    def first_copy() -> float:
        start = time.perf_counter()
        for i, doc in enumerate(docs):
            inst.clear_caches()
            inst.instrument(html=doc, text=None, copy_id=i, codec=codec, base_url=BASE)
        return len(docs) / (time.perf_counter() - start)

    def further_copies() -> float:
        start = time.perf_counter()
        for i, doc in enumerate(docs):
            for c in range(args.copies):
                inst.instrument(
                    html=doc, text=None, copy_id=i * 1000 + c, codec=codec, base_url=BASE
                )
        return len(docs) * args.copies / (time.perf_counter() - start)

    best = {"reference": 0.0, "first": 0.0, "further": 0.0}
    for _ in range(args.rounds):
        best["reference"] = max(best["reference"], reference())
        best["first"] = max(best["first"], first_copy())
        best["further"] = max(best["further"], further_copies())
    ref = best["reference"]
    print(f"{len(docs)} emails from {args.corpus}, best of {args.rounds} rounds")
    print(
        f"pytracking.adapt_html                    {ref:9.0f} emails/s   1.0x  ({failures} raised)"
    )
    print(
        f"mailbeacon, first copy of a new body     {best['first']:9.0f} emails/s  {best['first'] / ref:5.1f}x"
    )
    print(
        f"mailbeacon, each further copy ({args.copies}/body)  {best['further']:9.0f} emails/s  {best['further'] / ref:5.1f}x"
    )
    if args.breakdown:
        print_breakdown(docs, codec, args.rounds, 1e6 / ref)
    return 0


def _scanner_regex_only(doc: str) -> None:
    """The scan's regular expression steps, without reading what they find."""
    pattern, pos = html_links._SCAN_VISIBLE, 0
    while True:
        m = pattern.match(doc, pos)
        assert m is not None
        kind = m.lastgroup
        if kind == "end":
            return
        if kind == "vis":
            pattern, pos = html_links._SCAN_LINKS, m.start("vis")
        elif kind == "raw":
            name = m.group("rawname").lower()
            closing = (
                html_links._RAW_END[name].search(doc, m.end()) if name != "plaintext" else None
            )
            if closing is None:
                return
            pos = closing.start()
        else:
            pos = m.end()


def print_breakdown(docs: list[str], codec: TokenCodec, rounds: int, reference_us: float) -> None:
    scans = [html_links.scan_html(doc) for doc in docs]

    def first() -> None:
        for i, doc in enumerate(docs):
            inst.clear_caches()
            inst.instrument(html=doc, text=None, copy_id=i, codec=codec, base_url=BASE)

    def first_and_second() -> None:  # the second copy finds the plan cached
        for i, doc in enumerate(docs):
            inst.clear_caches()
            inst.instrument(html=doc, text=None, copy_id=i, codec=codec, base_url=BASE)
            inst.instrument(html=doc, text=None, copy_id=10**6 + i, codec=codec, base_url=BASE)

    stages: dict[str, Callable[[], object]] = {
        "first": first,
        "regex": lambda: [_scanner_regex_only(doc) for doc in docs],
        "scan": lambda: [html_links.scan_html(doc) for doc in docs],
        "plan": lambda: [inst._Plan(d, s, [], BASE) for d, s in zip(docs, scans, strict=True)],
        "two": first_and_second,
    }
    best = dict.fromkeys(stages, float("inf"))
    for _ in range(rounds):  # the stages side by side in each round: the machine drifts
        for name, work in stages.items():
            start = time.perf_counter()
            work()
            best[name] = min(best[name], (time.perf_counter() - start) / len(docs) * 1e6)
    copy = best["two"] - best["first"]
    rest = best["first"] - best["scan"] - best["plan"] - copy
    print(f"\nfirst copy, microseconds per email (pytracking: {reference_us:.0f})")
    print(f"  total                                  {best['first']:7.1f}")
    print(f"  scan: regular expression steps         {best['regex']:7.1f}")
    print(f"  scan: reading links, comments (Python) {best['scan'] - best['regex']:7.1f}")
    print(f"  plan: trackable? anchor texts          {best['plan']:7.1f}")
    print(f"  copy: tokens, pixel, splice            {copy:7.1f}")
    print(f"  rest: deflating destinations, caches   {rest:7.1f}")
    print(f"  a 10x first copy needs a total of      {reference_us / 10:7.1f}")


if __name__ == "__main__":
    raise SystemExit(main())
