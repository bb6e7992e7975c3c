"""Live web dashboard of what the pipeline published: `python -m pipeline.apps.dashboard`.

model.py holds the computations (pure functions), sources.py the thin readers (S3 or a
directory, the level table, the cached history), server.py the aiohttp server (JSON
endpoints and Server-Sent Events), static/ the page (HTML, one JS, one CSS; plotly.js is
served from the plotly package, so nothing comes from the internet).
"""
