"""The farm dashboard (Streamlit): reads the store through farm.store and farm.results.select, never writes it."""
