"""An engine's download buttons, and the watch that turns an engine file gone bad into a lasting error.

The buttons never rerun the page (`on_click="ignore"`): Streamlit 1.67 registers a new deferred file on every
script run, and a click whose rerun met another run lost its download (measured in a headless Chromium: 4 of 8
clicks made while the page ran, 5 of 8 clicks 100 ms apart; none with "ignore"). So the file is checked when the
page is drawn, and again every few seconds by a fragment that reruns the page when a check changes: a file that
goes bad after the page was drawn shows the lasting error (naming the artifact and `farm verify --repair`)
within `WATCH_S`, where the click alone showed Streamlit's passing "Failed to generate file for download"."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta

import streamlit as st

from dashboard import data

WATCH_S = 2.0  # a stat per engine per tick: the hash is cached by size and mtime


@dataclass(frozen=True)
class Download:
    label: str
    make: Callable[[], bytes]  # run only on click
    file_name: str
    mime: str
    key: str
    icon: str | None = None


def engine_downloads(at: data.Where, build_key: str, downloads: Sequence[Download], caption: str | None = None,
                     width: int | str = "content") -> data.EngineCheck | None:
    """`caption` (markdown) left of the buttons, or above the line that says why there are none. Returns the
    check the buttons were drawn on, for `watch_engines`."""
    check = data.engine_check(at, build_key)
    if check is None or check.problem:
        if caption:
            st.markdown(caption)
        if check is None:
            st.caption("No engine file is stored for this build.")
        else:
            st.error(check.problem, icon=":material/broken_image:")
        return check
    if caption:
        text, row = st.columns([4, 1], vertical_alignment="center")
        text.markdown(caption)
    else:
        row = st.container(horizontal=True)
    for d in downloads:
        row.download_button(d.label, data=d.make, file_name=d.file_name, mime=d.mime, on_click="ignore", key=d.key,
                            icon=d.icon, width=width)
    return check


@st.fragment(run_every=timedelta(seconds=WATCH_S))
def watch_engines(at: data.Where, drawn: dict[str, data.EngineCheck | None]) -> None:
    """Reruns the page when an engine's check is no longer the one its buttons were drawn on. Draws nothing."""
    if any(data.engine_check(at, key) != check for key, check in drawn.items()):
        st.rerun(scope="app")
