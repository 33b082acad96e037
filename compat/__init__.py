"""ray-ha's compatibility runs: dependency floors and Pythons (`python -m compat deps`), Ray versions
(`python -m compat ray`). Each makes its own virtual environments, as a new machine would."""
