"""The web edge shared by our two FastAPI apps, the admin API (api/) and the scheduler
(scheduler/): errors -> HTTP, the request body cap and bearer-token reading."""
