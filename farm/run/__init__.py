"""The run side: a spec becomes jobs, the jobs run on the cluster, their results become rows.

    spec -> plan (jobs) -> driver (schedule, stages, tasks on the cluster) -> store
"""
