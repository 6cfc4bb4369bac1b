"""The master's HTTP side: the app and its routers (builder API, jobs, index,
operator API, dashboard, metrics) and what they share."""
