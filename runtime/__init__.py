"""The runtime: reads compiled artifacts only (hosts/*.json, zones/*.zone), never the spec."""
