"""The sparkfleet test lab: simulated DGX Spark hosts and the stand-ins they reach."""
