"""The farmer: plots (chiapos) and the proofs of space it answers challenges with."""
