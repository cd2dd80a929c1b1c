"""Console scripts: archivas-node, archivas-timelord, archivas-farmer, archivas-wallet."""
