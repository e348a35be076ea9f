"""Hand-run benchmarks of the metering API against raw PostgreSQL (see bench/README.md); not part of CI."""
