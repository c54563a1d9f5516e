"""`farm dashboard` runs this: `streamlit run dashboard/app.py`, with the store in FARM_DATA_DIR / FARM_DB_URL."""

from __future__ import annotations

import streamlit as st

from dashboard import data
from farm.store.db import shown_url

st.set_page_config(page_title="farm", page_icon=":material/memory:", layout="wide")

PAGES = [
    st.Page("views/sweeps.py", title="Sweeps", icon=":material/progress_activity:", default=True),
    st.Page("views/results.py", title="Results", icon=":material/table:"),
    st.Page("views/winners.py", title="Winners", icon=":material/emoji_events:"),
    st.Page("views/curves.py", title="Curves", icon=":material/show_chart:"),
    st.Page("views/engine.py", title="Engine", icon=":material/memory:"),
    st.Page("views/compare.py", title="Compare", icon=":material/compare_arrows:"),
    st.Page("views/history.py", title="History", icon=":material/history:"),
]

page = st.navigation(PAGES)
st.sidebar.caption(f"Store (read-only): {shown_url(data.where()[1])}")
page.run()
