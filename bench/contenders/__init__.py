"""Stand-alone contenders `make bench` runs as child processes next to crypto-live's services."""
