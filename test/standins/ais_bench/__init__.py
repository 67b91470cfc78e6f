"""Stand-in for Ascend's ais_bench package, for tests only (see test/standins/README.md)."""

STANDIN = True
