"""Physics of a decoy-state BB84 link: closed-form expectations and the simulated twins."""
