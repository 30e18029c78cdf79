"""`kdledger explore`: a local web page over a run's (or a chain's) provenance records."""
