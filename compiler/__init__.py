"""The compiler: spec to artifacts (GAL, GWART, zones, host configs), plan, state and the CLI."""
