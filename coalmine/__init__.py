"""coalmine: event-driven canary analysis."""
