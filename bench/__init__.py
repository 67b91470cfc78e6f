"""Benchmarks of the toolkit against the peers a user would otherwise reach for (not installed with the
package)."""
