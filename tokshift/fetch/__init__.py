"""Fetching datasets from their public mirrors (Kinetics-400 from the CVDF mirror: :mod:`tokshift.fetch.cvdf`)."""
