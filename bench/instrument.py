#!/usr/bin/env python3
"""Instrumentation speed over the HTML corpus beside pytracking's adapt_html, same run.

    .venv/bin/pip install -e '.[bench]'      # pytracking with lxml
    .venv/bin/python bench/instrument.py [--rounds 7] [--corpus ../shared/corpus/html] [--breakdown] [--cpu]

Prints emails/s for pytracking.adapt_html and for mailbeacon's instrument(), both
for a body seen for the first time (caches cleared: what the first copy of a new
email costs) and per personalised copy of the same body (what each further
recipient of a send costs). Best of N rounds, to damp noise from the machine, and the
median of each round's own ratios: the three are timed back to back in every round, so a
burst of load from elsewhere skews one round's ratio rather than one side's best.

With --breakdown it also prints where the first copy's time goes, in microseconds per
email: the scanner's regular expression alone, the rest of the scan (reading link tags,
conditional comments), planning the positions (is each destination trackable, anchor
texts), and the copy itself (tokens, pixel, splicing).
"""

from __future__ import annotations

import argparse
import os
import statistics
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
    parser.add_argument(
        "--cpu",
        action="store_true",
        help="time with this process's CPU time: on a machine shared with other work, waiting "
        "for a core then counts for neither side",
    )
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
    clock = time.process_time if args.cpu else time.perf_counter

    def reference() -> float:
        nonlocal failures
        failures = 0
        start = clock()
        for i, doc in enumerate(docs):
            try:
                adapt_html(doc, {"copy": i}, configuration=config)
            except Exception:
                failures += 1  # lxml finds no <body> in a few fragments
        return len(docs) / (clock() - start)

    def first_copy() -> float:
        start = clock()
        for i, doc in enumerate(docs):
            inst.clear_caches()
            inst.instrument(html=doc, text=None, copy_id=i, codec=codec, base_url=BASE)
        return len(docs) / (clock() - start)

    def further_copies() -> float:
        start = clock()
        for i, doc in enumerate(docs):
            for c in range(args.copies):
                inst.instrument(
                    html=doc, text=None, copy_id=i * 1000 + c, codec=codec, base_url=BASE
                )
        return len(docs) * args.copies / (clock() - start)

    best = {"reference": 0.0, "first": 0.0, "further": 0.0}
    ratios: dict[str, list[float]] = {"first": [], "further": []}
    for _ in range(args.rounds):
        rates = {"reference": reference(), "first": first_copy(), "further": further_copies()}
        for name, rate in rates.items():
            best[name] = max(best[name], rate)
        for name in ratios:
            ratios[name].append(rates[name] / rates["reference"])
    ref = best["reference"]
    first_median, further_median = (statistics.median(r) for r in ratios.values())
    timed = "CPU time" if args.cpu else "wall-clock time"
    print(f"{len(docs)} emails from {args.corpus}, {timed}, best of {args.rounds} rounds")
    print(f"{'':40s} {'emails/s':>9s}  best  median of rounds")
    print(f"pytracking.adapt_html                    {ref:9.0f}   1.0x  ({failures} raised)")
    print(
        f"mailbeacon, first copy of a new body     {best['first']:9.0f} {best['first'] / ref:5.1f}x  {first_median:5.1f}x"
    )
    print(
        f"mailbeacon, each further copy ({args.copies}/body)  {best['further']:9.0f} {best['further'] / ref:5.1f}x  {further_median:5.1f}x"
    )
    if args.breakdown:
        print_breakdown(docs, codec, args.rounds, 1e6 / ref, clock)
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
            closing = html_links._raw_text_end(doc, m.group("rawname").lower(), m.end(), len(doc))
            if closing < 0:
                return
            pos = closing
        else:
            pos = m.end()


def print_breakdown(
    docs: list[str],
    codec: TokenCodec,
    rounds: int,
    reference_us: float,
    clock: Callable[[], float],
) -> None:
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
            start = clock()
            work()
            best[name] = min(best[name], (clock() - start) / len(docs) * 1e6)
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
