"""Sweeps: each sweep's progress per stage (live while it runs) and its failures with their logs."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import data

REFRESH_S = 5

st.title("Sweeps")
at = data.where()
data.require(at, "sweeps")
table = data.sweeps(at)

ids = table["id"].tolist()
names = {int(r.id): f"#{r.id} {r.name} ({r.status})" for r in table.itertuples()}
sweep_id = st.selectbox("Sweep", ids, format_func=lambda i: names[int(i)], key="sweep")
row = table[table["id"] == sweep_id].iloc[0]
running = row["status"] == "running"
auto = st.toggle(f"Auto-refresh every {REFRESH_S} s", value=bool(running), key=f"auto_refresh-{sweep_id}",
                 help="Re-reads the progress while the sweep writes; the page stays usable meanwhile.")


@st.fragment(run_every=REFRESH_S if auto else None)
def progress(sweep_id: int) -> None:
    stages = data.stage_progress(at, sweep_id)
    total = int(stages["total"].sum())
    pending = int(stages["pending"].sum())
    failed = int(stages["failed"].sum())
    current = data.sweeps(at)
    status = current.loc[current["id"] == sweep_id, "status"].iloc[0]
    started = current.loc[current["id"] == sweep_id, "started"].iloc[0]
    finished = current.loc[current["id"] == sweep_id, "finished"].iloc[0]
    cols = st.columns(4)
    cols[0].metric("Status", status)
    cols[1].metric("Jobs finished", f"{total - pending} / {total}")
    cols[2].metric("Failed", failed)
    now = pd.Timestamp.now(tz="UTC")
    end = finished if pd.notna(finished) else (now if started.tzinfo else now.tz_localize(None))  # SQLite keeps naive UTC
    cols[3].metric("Elapsed", _duration((end - started).total_seconds()))
    if status == "running" and total:
        st.progress((total - pending) / total, text=f"{total - pending} of {total} jobs finished")
    st.dataframe(
        stages,
        hide_index=True,
        column_config={"progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0, format="percent")},
    )
    if held := data.waiting(at, sweep_id):
        st.caption("Pending, but not for a free node: another driver over this store runs these jobs (its lease); this sweep "
                   "uses the results it writes, or runs a job itself once that lease lapses.")
        st.dataframe(pd.DataFrame([{"stage": w.stage, "job": w.label, "run by sweep": w.held_by_sweep, "lease until (UTC)": w.expires_at}
                                   for w in held]), hide_index=True, key="waiting_table")


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(max(seconds, 0)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s"


progress(int(sweep_id))

st.subheader("Failures")
found = data.failures(at, int(sweep_id))
if not found:
    st.success("No failed jobs in this sweep.")
for failure in found:
    with st.expander(f"{failure.stage}: {failure.label}"):
        st.error(failure.error or "failed without an error message")
        if failure.node:
            st.caption(f"on {failure.node}")
        st.code(failure.log or "(no log recorded)", language=None)

st.subheader("All sweeps")
st.dataframe(table, hide_index=True)
