"""The read side: metrics, verdicts and winners read from the store, the report file and delivery.

Nothing here imports the run side (farm.run): the dashboard and `farm best` read a store any farm wrote.
"""
