"""After scoring: reference profiles, drift, realised performance, the action's impact, a
monitoring history and its dashboard."""
