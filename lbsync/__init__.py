"""lbsync: keep nginx upstreams equal to the web nodes Serf knows are alive."""

__version__ = "0.1.0"
