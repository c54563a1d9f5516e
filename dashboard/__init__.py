"""The farm dashboard (Streamlit): reads the store through farm.store and farm.select, never writes it."""
