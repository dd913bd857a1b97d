"""`swe-aem view`: a self-contained web page over a run folder (a training run, a `swe-aem
eval` report, a `swe-aem rollout` output), written as static files or served locally.

`data.py` reads the folder into what the page shows (the run, an index of every episode by
byte offset, one episode on demand with its credit rows); `site.py` writes that as small
script-loaded chunks (a page opened from file:// cannot fetch()) or serves the same chunks,
computed as they are asked for; `static/` is the page itself (no network, no CDN).
"""
