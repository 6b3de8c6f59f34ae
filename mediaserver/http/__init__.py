"""The data plane's HTTP application: health, metrics, live-stream stats, HLS, WHEP/WHIP and the player pages.

It runs without the control plane; the control plane adds its routes and its policies (who may read the stats,
who may play) through `access.StatsGate` and the `Authorizer` seam.
"""
